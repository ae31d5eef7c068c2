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
    recipe_settings: list = [],  # noqa: B006 (KFP needs a literal default)
    limit: int = 0,
    hf_token_secret: str = "",
):
    """Evaluate ``model_id`` (plus ``adapter`` when given) on the test split.

    ``test_data``: data prep's folder (holding test.jsonl) or the test.jsonl file itself. ``evaluation``: a folder
    with metrics.json and predictions.jsonl, the compare step's input. ``recipe_settings``: recipe ``section.field=value`` strings
    (a list, or one string separated by commas/newlines). ``limit`` 0 evaluates the full split.
    """
    from components.common.errors import exit_on_user_error
    from components.common.secrets import export_hf_token
    from components.evaluate.outputs import evaluate_for_pipeline

    with exit_on_user_error():
        export_hf_token(hf_token_secret or None)  # read by from_pretrained and vLLM; never logged
        outputs = evaluate_for_pipeline(
            test_data.path, evaluation.path, summary.path, model_id=model_id,
            adapter=adapter.path if adapter is not None else None, recipe=recipe, overrides=recipe_settings, limit=limit,
        )
    for key, value in outputs.metrics.items():
        metrics.log_metric(key, value)
    confusion.log_confusion_matrix(outputs.confusion_categories, outputs.confusion_matrix)
    evaluation.metadata.update(outputs.evaluation_metadata)
