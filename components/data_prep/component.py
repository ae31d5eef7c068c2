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
    model_id: str = "",
    tokenizer_model: Input[Model] = None,
    val_size: int = 0,
    seed: int = -1,
    max_reject_rate: float = 0.05,
    layout: str = "auto",
    num_options: int = 0,
    hf_token_secret: str = "",
):
    """MedQA (HF id, gs:// prefix or folder) -> the notebook's prompts; bad rows to ``rejected_rows``.

    ``prepared_data`` is the folder the later steps read (train/validation/test.jsonl, stats.json);
    ``train_data``/``validation_data``/``test_data`` are the same splits as single JSONL files, and
    ``rejected_rows`` is rejected.jsonl. The prompt tokens are counted with ``tokenizer_model`` when given,
    else ``model_id``, else the recipe's model. ``val_size`` 0 and ``seed`` -1 mean the recipe's values.
    ``hf_token_secret`` is a Secret Manager resource name, never a token.
    """
    import logging
    import shutil
    from pathlib import Path

    from components.common.errors import exit_on_user_error
    from components.common.recipes import load_recipe
    from components.data_prep.core import prepare_medqa, render_summary, scalar_metrics

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with exit_on_user_error():
        spec = load_recipe(recipe)
        out_dir = Path(prepared_data.path)
        stats = prepare_medqa(
            source,
            out_dir,
            tokenizer=tokenizer_model.path if tokenizer_model is not None else (model_id or spec.model.model_id),
            val_size=val_size or spec.data.val_size,
            seed=spec.data.seed if seed < 0 else seed,
            max_reject_rate=max_reject_rate,
            layout=layout,
            prompt_template=spec.data.prompt_template,
            max_prompt_tokens=spec.data.max_prompt_tokens,
            num_options=num_options,
            hf_token_secret=hf_token_secret or None,
        )
    for artifact, name in (
        (train_data, "train"),
        (validation_data, "validation"),
        (test_data, "test"),
        (rejected_rows, "rejected"),
    ):
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out_dir / f"{name}.jsonl", artifact.path)
        count = stats["rejected"]["total"] if name == "rejected" else stats["output_rows"][name]
        artifact.metadata.update({"rows": count, "format": "jsonl"})
    prepared_data.metadata.update(
        {"rows": stats["output_rows"], "layout": stats["layout"], "letters": stats["letters"]}
    )
    for key, value in scalar_metrics(stats).items():
        prep_metrics.log_metric(key, value)
    Path(prep_summary.path).parent.mkdir(parents=True, exist_ok=True)
    Path(prep_summary.path).write_text(render_summary(stats), encoding="utf-8")
