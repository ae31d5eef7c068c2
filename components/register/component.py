"""KFP wrapper for the register step. No @dsl.component here: pipelines/ binds the image at compile time
with ``dsl.component(register_model, base_image=..., install_kfp_package=False)``. KFP serializes only
this function's source, so it imports what it needs inside itself."""

from kfp.dsl import Artifact, Input, Markdown, Model, Output


def register_model(
    model: Input[Model],
    comparison: Input[Artifact],
    tuned_evaluation: Input[Artifact],
    registered_model: Output[Artifact],
    champion_report: Output[Markdown],
    registry_uri: str,
    model_name: str,
    recipe: str,
    pipeline_run: str,
    base_model: str = "google/medgemma-4b-it",
    data_fingerprint: str = "",
    serving_mode: str = "merged",
    recipe_settings: list = [],  # noqa: B006 (recipe "section.field=value" changes: the serving flags)
    serving_image: str = "",
    encryption_key: str = "",
    run_project: str = "",
    run_location: str = "",
    api_endpoint: str = "",
) -> str:
    """Register the tuned model as a new version; returns its resource name (Vertex) or folder (file registry).

    registry_uri: a folder (file registry), vertex://projects/P/locations/L, or vertex:// for the run's own
    ``run_project`` and ``run_location`` (the pipeline passes Vertex's placeholders for them). pipeline_run: pass
    dsl.PIPELINE_JOB_NAME_PLACEHOLDER so a retried task finds the version it made. Local model files are
    copied under this task's output (inside the pipeline root) before a Vertex upload. encryption_key: CMEK
    for the uploaded model (empty: Google-managed). tuned_evaluation: the tuned model's evaluate output; its
    predictions are stored with the version and tested against the current champion's. champion_report: base
    model, champion and challenger side by side.
    """
    import logging

    from components.common.errors import exit_on_user_error
    from components.register.core import DEFAULT_VLLM_IMAGE, write_registration
    from components.register.core import register_model as register
    from components.register.core import resolve_registry_uri

    logging.basicConfig(level=logging.INFO)
    staging_uri = registered_model.uri + "/model" if registered_model.uri.startswith("gs://") else None
    with exit_on_user_error():
        result = register(
            model.path,  # on Vertex a /gcs/ FUSE path, which the core maps back to gs:// (no second copy)
            comparison.path,
            resolve_registry_uri(registry_uri, run_project, run_location),
            model_name=model_name,
            base_model=base_model,
            recipe=recipe,
            data_fingerprint=data_fingerprint,
            pipeline_run=pipeline_run,
            serving_mode=serving_mode,
            recipe_overrides=list(recipe_settings),
            predictions_path=tuned_evaluation.path,
            serving_image=serving_image or DEFAULT_VLLM_IMAGE,
            staging_uri=staging_uri,
            api_endpoint=api_endpoint or None,
            encryption_key=encryption_key or None,
        )
    registered_model.metadata.update(
        {"resource_name": result.resource_name, "version": result.version, "aliases": result.aliases,
         "artifact_uri": result.uri, "backend": result.backend, "created": result.created}
    )
    # A folder: on Vertex the uploaded model files sit under it too (<uri>/model/), so one name is one thing.
    write_registration(result, registered_model.path, champion_report.path)
    return result.resource_name


def not_registered() -> str:
    """What a branch whose gate failed hands on in place of a registration: no resource name. (The pipeline
    joins the two branches with dsl.OneOf, so every model reaches the results table.)"""
    return ""
