"""KFP wrapper of the GRPO training step (no @dsl.component here: images are bound in pipelines/)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def grpo_train_component(
    prepared_data: Input[Dataset],
    tuned_model: Output[Model],
    training_metrics: Output[Metrics],
    recipe: str = "medgemma-4b",
    model_id: str = "google/medgemma-4b-it",
    overrides: list = [],  # noqa: B006 (KFP needs a literal default)
    serving_mode: str = "adapter",
    hf_token_secret: str = "",
    completion_sample_size: int = 0,
):
    """GRPO + LoRA training; ``tuned_model`` holds ``adapter/`` (and ``merged/`` bf16 weights when
    ``serving_mode`` is ``merged``, the form the register step then uploads).

    ``tuned_model`` is also where checkpoints live (on Vertex a /gcs/ path under the pipeline root), so a
    restarted task resumes from the newest complete one. ``overrides``: recipe ``section.field=value``
    strings. ``hf_token_secret``: a Secret Manager resource name, never a token.
    """
    import logging

    from components.common.secrets import resolve_hf_token
    from components.grpo_train.core import train_grpo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    outcome = train_grpo(
        recipe, prepared_data.path, tuned_model.path, model=model_id or None, overrides=list(overrides),
        merge=serving_mode == "merged", token=resolve_hf_token(hf_token_secret or None),
        completion_sample_size=completion_sample_size,
    )
    tuned_model.metadata.update({
        "base_model": model_id, "recipe": recipe, "global_step": outcome.global_step, "backend": outcome.backend,
        "final_reward": outcome.metrics.get("reward"), "adapter_dir": "adapter",
        "merged_dir": "merged" if outcome.merged_dir else "",
    })
    for name, value in outcome.metrics.items():
        training_metrics.log_metric(name, value)
    training_metrics.log_metric("global_step", outcome.global_step)
