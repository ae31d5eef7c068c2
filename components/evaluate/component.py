"""KFP wrapper of the evaluate step (no @dsl.component here: images are bound in pipelines/)."""

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def evaluate_model_component(
    test_data: Input[Dataset],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    summary: Output[Markdown],
    model_id: str = "google/medgemma-4b-it",
    adapter: Input[Model] = None,
    recipe: str = "medgemma-4b",
    overrides: list = [],  # noqa: B006 (KFP needs a literal default)
    limit: int = 0,
    hf_token_secret: str = "",
):
    """Evaluate ``model_id`` (plus ``adapter`` when given) on the test split.

    ``test_data``: data prep's folder (holding test.jsonl) or the test.jsonl file itself. ``evaluation``: a folder
    with metrics.json and predictions.jsonl, the compare step's input. ``overrides``: recipe ``key=value`` strings
    (a list, or one string separated by commas/newlines). ``limit`` 0 evaluates the full split.
    """
    import json
    from pathlib import Path

    from components.common.errors import exit_on_user_error
    from components.common.secrets import export_hf_token
    from components.evaluate.core import NO_ANSWER, evaluate_model

    with exit_on_user_error():
        export_hf_token(hf_token_secret or None)  # read by from_pretrained and vLLM; never logged

    data_path = Path(test_data.path)
    if data_path.is_dir():
        data_path = data_path / "test.jsonl"
    if isinstance(overrides, str):
        overrides = [item.strip() for item in overrides.replace("\n", ",").split(",") if item.strip()]
    adapter_path = adapter.path if adapter is not None else None
    with exit_on_user_error():
        result = evaluate_model(
            model_id, data_path, evaluation.path, adapter=adapter_path, recipe=recipe, overrides=list(overrides),
            limit=limit,
        )

    for key in ("accuracy", "ci_low", "ci_high", "format_rate", "truncation_rate", "mean_completion_tokens", "n"):
        metrics.log_metric(key, result[key])
    for meta_key, values in result["accuracy_by_meta"].items():
        for value, entry in values.items():
            metrics.log_metric(f"accuracy[{meta_key}={value}]", entry["accuracy"])
    table = result["confusion"]
    labels = table["labels"]
    # Square matrix for the Vertex UI: gold letters x (letters + no answer); "no answer" is never a gold label.
    categories = labels + [NO_ANSWER]
    matrix = [[table["matrix"][gold][pred] for pred in categories] for gold in labels] + [[0] * len(categories)]
    confusion.log_confusion_matrix(categories, matrix)
    evaluation.metadata.update({"accuracy": result["accuracy"], "n": result["n"], "backend": result["backend"]})
    Path(summary.path).parent.mkdir(parents=True, exist_ok=True)
    Path(summary.path).write_text(
        "# Evaluation\n\n"
        f"Model `{model_id}`" + (" + adapter" if adapter_path else "") + f", {result['n']} questions, backend {result['backend']}.\n\n"
        "| accuracy | 95% CI (Wilson) | format rate | truncation rate | mean completion tokens |\n"
        "| --- | --- | --- | --- | --- |\n"
        f"| {result['accuracy']:.3f} | [{result['ci_low']:.3f}, {result['ci_high']:.3f}] | {result['format_rate']:.3f} "
        f"| {result['truncation_rate']:.3f} | {result['mean_completion_tokens']:.0f} |\n\n"
        f"Decoding: `{json.dumps(result['decoding'])}`\n",
        encoding="utf-8",
    )
