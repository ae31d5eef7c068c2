"""KFP wrapper of the data prep step (no @dsl.component here: images are bound in pipelines/)."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output


def prepare_medqa_component(
    prepared_data: Output[Dataset],
    train_data: Output[Dataset],
    validation_data: Output[Dataset],
    test_data: Output[Dataset],
    rejected_rows: Output[Dataset],
    prep_metrics: Output[Metrics],
    prep_summary: Output[Markdown],
    source: str = "openlifescienceai/medqa",
    recipe: str = "medgemma-4b",
    recipe_settings: list = [],  # noqa: B006 (KFP needs a literal default)
    model_id: str = "",
    tokenizer_model: Input[Model] = None,
    max_reject_rate: float = 0.05,
    layout: str = "auto",
    num_options: int = 0,
    hf_token_secret: str = "",
) -> str:
    """MedQA (HF id, gs:// prefix or folder) -> the notebook's prompts; bad rows to ``rejected_rows``. Returns the
    data fingerprint, a content hash of the prepared splits (the registered model's ``data_fingerprint`` label).

    ``prepared_data`` is the folder the later steps read (train/validation/test.jsonl, stats.json);
    ``train_data``/``validation_data``/``test_data`` are the same splits as single JSONL files, and
    ``rejected_rows`` is rejected.jsonl. Validation size, seed, prompt template and token budget come from the
    recipe (``recipe_settings``: ``section.field=value`` changes). Prompt tokens are counted with
    ``tokenizer_model`` when given, else ``model_id``, else the recipe's model. ``hf_token_secret`` is a Secret
    Manager resource name, never a token.
    """
    import logging

    from components.common.errors import exit_on_user_error
    from components.data_prep.outputs import prepare_for_pipeline

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with exit_on_user_error():
        outputs = prepare_for_pipeline(
            source, prepared_data.path,
            {"train": train_data.path, "validation": validation_data.path, "test": test_data.path,
             "rejected": rejected_rows.path},
            prep_summary.path, recipe=recipe, recipe_settings=list(recipe_settings),
            tokenizer=tokenizer_model.path if tokenizer_model is not None else model_id,
            max_reject_rate=max_reject_rate, layout=layout, num_options=num_options, hf_token_secret=hf_token_secret,
        )
    prepared_data.metadata.update(outputs.prepared_metadata)
    for artifact, name in ((train_data, "train"), (validation_data, "validation"), (test_data, "test"),
                           (rejected_rows, "rejected")):
        artifact.metadata.update(outputs.file_metadata[name])
    for key, value in outputs.metrics.items():
        prep_metrics.log_metric(key, value)
    return outputs.fingerprint
