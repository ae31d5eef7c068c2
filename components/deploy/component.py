"""KFP wrappers of the deploy and smoke-test steps (no @dsl.component here: images are bound in pipelines/).
KFP serializes only each function's source, so each imports what it needs inside itself."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def deploy_model_component(
    registered_model: Input[Artifact],
    deployment: Output[Artifact],
    endpoint_name: str,
    machine_type: str = "g2-standard-12",
    accelerator_type: str = "NVIDIA_L4",
    accelerator_count: int = 1,
    min_replica_count: int = 1,
    max_replica_count: int = 1,
    traffic_percentage: int = 100,
    api_endpoint: str = "",
) -> str:
    """Deploy the registered version to the endpoint named ``endpoint_name`` (created when missing); returns
    the deployed model's id. ``traffic_percentage`` below 100 is a canary share; the other versions keep the
    rest. ``deployment`` is a folder holding deployment.json (with the split to restore on a rollback)."""
    import logging

    from components.common.errors import exit_on_user_error
    from components.deploy.core import DeploymentSpec, deploy_model, write_deployment

    logging.basicConfig(level=logging.INFO)
    with exit_on_user_error():
        result = deploy_model(registered_model.path, DeploymentSpec(
            endpoint_name=endpoint_name, machine_type=machine_type, accelerator_type=accelerator_type,
            accelerator_count=accelerator_count, min_replica_count=min_replica_count,
            max_replica_count=max_replica_count, traffic_percentage=traffic_percentage,
        ), api_endpoint=api_endpoint or None)
    write_deployment(result, deployment.path)
    deployment.metadata.update({"endpoint": result.endpoint, "deployed_model_id": result.deployed_model_id,
                                "traffic_split": result.traffic_split, "backend": result.backend})
    return result.deployed_model_id


def smoke_test_component(
    deployment: Input[Artifact],
    test_data: Input[Dataset],
    report: Output[Artifact],
    metrics: Output[Metrics],
    recipe: str,
    recipe_settings: list = [],  # noqa: B006 (KFP needs a literal default)
    prompts: int = 20,
    min_format_rate: float = 0.9,
    undeploy_after: bool = False,
    api_endpoint: str = "",
):
    """Send ``prompts`` test prompts through the deployed endpoint (decoding from the recipe's evaluation
    section); fail, rolling traffic back to the previous version, when a request errors or the format rate is
    below ``min_format_rate``. ``report``: a folder holding smoke_test.json (counts and timings, no text)."""
    import logging

    from components.common.errors import exit_on_user_error
    from components.deploy.smoke_test import smoke_test

    logging.basicConfig(level=logging.INFO)
    with exit_on_user_error():
        result = smoke_test(deployment.path, test_data.path, report.path, recipe=recipe, overrides=list(recipe_settings),
                            prompts=prompts, min_format_rate=min_format_rate, undeploy_after=undeploy_after,
                            api_endpoint=api_endpoint or None)
    for key in ("n", "errors", "format_rate", "accuracy", "latency_p50_s", "latency_p95_s"):
        if result[key] is not None:
            metrics.log_metric(key, result[key])
