"""KFP wrappers of the parameter check and the model plan (no @dsl.component here: images are bound in
pipelines/)."""

from typing import List, NamedTuple


def check_parameters_component(
    recipe: str,
    recipe_settings: list,
    train_accelerator_type: str,
    train_accelerator_count: int,
    train_nodes: int,
    train_on_spot: bool,
    eval_accelerator_type: str,
    eval_accelerator_count: int,
    eval_question_limit: int,
    gate_margin: float,
    gate_alpha: float,
    registry_uri: str,
    model_display_name: str,
    registered_weights: str,
    hf_token_secret: str = "",
    encryption_key: str = "",
    network: str = "",
    service_account: str = "",
    tensorboard: str = "",
    deploy_endpoint: str = "",
    deploy_machine_type: str = "",
    deploy_accelerator_type: str = "",
    deploy_accelerator_count: int = 0,
    deploy_min_replicas: int = 1,
    deploy_max_replicas: int = 1,
    deploy_traffic_percentage: int = 100,
    smoke_test_prompts: int = 20,
    smoke_test_min_format_rate: float = 0.9,
    target: str = "vertex",
    kfp_gpu_types: dict = {},  # noqa: B006 (KFP needs a literal default)
    kfp_volume_path: str = "",
) -> str:
    """Fail on the first pipeline parameter that cannot work, naming it; return where training runs
    (``one-vm`` or ``custom-job``). A single string output, so that the pipeline can branch on it.

    ``target`` (vertex, kfp, local) and the ``kfp_*`` settings are compile-time constants (pipelines/targets.py):
    on kfp, what only Vertex has is refused, and the GPU types must be those compiled into the node selectors."""
    from components.common.errors import exit_on_user_error
    from components.preflight.core import check_run_parameters

    with exit_on_user_error():
        return check_run_parameters(
            recipe=recipe, recipe_settings=list(recipe_settings), train_accelerator_type=train_accelerator_type,
            train_accelerator_count=train_accelerator_count, train_nodes=train_nodes, train_on_spot=train_on_spot,
            eval_accelerator_type=eval_accelerator_type, eval_accelerator_count=eval_accelerator_count,
            eval_question_limit=eval_question_limit, gate_margin=gate_margin, gate_alpha=gate_alpha,
            registry_uri=registry_uri, model_display_name=model_display_name, registered_weights=registered_weights,
            hf_token_secret=hf_token_secret, encryption_key=encryption_key, network=network,
            service_account=service_account, tensorboard=tensorboard,
            deploy_endpoint=deploy_endpoint, deploy_machine_type=deploy_machine_type,
            deploy_accelerator_type=deploy_accelerator_type, deploy_accelerator_count=deploy_accelerator_count,
            deploy_min_replicas=deploy_min_replicas, deploy_max_replicas=deploy_max_replicas,
            deploy_traffic_percentage=deploy_traffic_percentage, smoke_test_prompts=smoke_test_prompts,
            smoke_test_min_format_rate=smoke_test_min_format_rate, target=target,
            kfp_gpu_types=dict(kfp_gpu_types), kfp_volume_path=kfp_volume_path,
        )


def plan_models_component(
    models: list,
    base_model: str,
    recipe: str,
    recipe_settings: list,
    model_display_name: str,
    deploy_endpoint: str = "",
) -> List[dict]:  # typed items: each loop item reaches model-entry as an object, not as JSON text
    """The run's models, checked and completed (name, base_model, recipe, recipe_settings, model_display_name,
    endpoint_name): the list the pipeline fans out over. Empty ``models``: the one model of ``base_model`` and
    ``recipe``."""
    from components.common.errors import exit_on_user_error
    from components.preflight.models import plan_models

    with exit_on_user_error():
        return plan_models(list(models), base_model=base_model, recipe=recipe, recipe_settings=list(recipe_settings),
                           model_display_name=model_display_name, deploy_endpoint=deploy_endpoint)


def model_entry_component(model: dict) -> NamedTuple(
    "ModelEntry", name=str, base_model=str, recipe=str, recipe_settings=list, model_display_name=str,
    endpoint_name=str,
):
    """One planned model's fields as separate outputs for its branch's steps (kfp.local cannot read a field of a
    loop item, so the branch reads them from here)."""
    return (model["name"], model["base_model"], model["recipe"], list(model["recipe_settings"]),
            model["model_display_name"], model["endpoint_name"])
