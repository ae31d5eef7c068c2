"""The evaluate step as a pipeline task: the evaluation folder plus what the Vertex UI shows (scalar metrics,
a square confusion matrix, a Markdown summary). The KFP wrapper copies these onto its artifacts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.evaluate.core import NO_ANSWER, evaluate_model

SCALAR_METRICS = ("accuracy", "ci_low", "ci_high", "notebook_accuracy", "notebook_ci_low", "notebook_ci_high",
                  "format_rate", "truncation_rate", "mean_completion_tokens", "n")


@dataclass
class EvaluationOutputs:
    metrics: dict[str, float]
    confusion_categories: list[str]
    confusion_matrix: list[list[int]]
    evaluation_metadata: dict[str, Any]


def as_override_list(overrides: list[str] | str) -> list[str]:
    """Recipe overrides as a list: a list as given, or one string separated by commas or newlines."""
    if isinstance(overrides, str):
        return [item.strip() for item in overrides.replace("\n", ",").split(",") if item.strip()]
    return list(overrides)


def ui_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Scalars for a KFP Metrics artifact, accuracy per metadata value included."""
    metrics = {key: result[key] for key in SCALAR_METRICS}
    for meta_key, values in result["accuracy_by_meta"].items():
        for value, entry in values.items():
            metrics[f"accuracy[{meta_key}={value}]"] = entry["accuracy"]
    return metrics


def ui_confusion(confusion: dict[str, Any]) -> tuple[list[str], list[list[int]]]:
    """A square matrix for the Vertex UI: gold letters x (letters + no answer), plus an all-zero "no answer" row
    ("no answer" is never a gold label, but the UI wants as many rows as columns)."""
    labels = confusion["labels"]
    categories = labels + [NO_ANSWER]
    matrix = [[confusion["matrix"][gold][pred] for pred in categories] for gold in labels] + [[0] * len(categories)]
    return categories, matrix


def render_summary(result: dict[str, Any], model_id: str, with_adapter: bool) -> str:
    """The evaluation's Markdown card: numbers and decoding settings only, no question text."""
    return (
        "# Evaluation\n\n"
        f"Model `{model_id}`" + (" + adapter" if with_adapter else "")
        + f", {result['n']} questions, backend {result['backend']}.\n\n"
        "| accuracy, strict (gate) | 95% CI (Wilson) | accuracy, notebook's extraction | 95% CI (Wilson) "
        "| format rate | truncation rate | mean completion tokens |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {result['accuracy']:.3f} | [{result['ci_low']:.3f}, {result['ci_high']:.3f}] "
        f"| {result['notebook_accuracy']:.3f} | [{result['notebook_ci_low']:.3f}, {result['notebook_ci_high']:.3f}] "
        f"| {result['format_rate']:.3f} | {result['truncation_rate']:.3f} "
        f"| {result['mean_completion_tokens']:.0f} |\n\n"
        "Strict: exactly one `<answer>` pair holding one option letter, the reward's and the gate's rule. "
        "Notebook's extraction: the text after the last `<answer>` equals the gold letter (a bare letter counts); "
        "reported for comparison with the notebook's table, never gated.\n\n"
        f"Decoding: `{json.dumps(result['decoding'])}`\n"
    )


def evaluate_for_pipeline(
    test_data: str,
    evaluation_dir: str,
    summary_path: str,
    *,
    model_id: str,
    adapter: str | None,
    recipe: str,
    overrides: list[str] | str,
    limit: int,
) -> EvaluationOutputs:
    """Evaluate on ``test_data`` (data prep's folder or a test.jsonl), write ``evaluation_dir`` (metrics.json,
    predictions.jsonl) and the Markdown summary; return what the task's UI artifacts show."""
    data_path = Path(test_data)
    if data_path.is_dir():
        data_path = data_path / "test.jsonl"
    result = evaluate_model(
        model_id, data_path, evaluation_dir, adapter=adapter, recipe=recipe, overrides=as_override_list(overrides),
        limit=limit,
    )
    Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
    Path(summary_path).write_text(render_summary(result, model_id, adapter is not None), encoding="utf-8")
    categories, matrix = ui_confusion(result["confusion"])
    return EvaluationOutputs(
        metrics=ui_metrics(result),
        confusion_categories=categories,
        confusion_matrix=matrix,
        evaluation_metadata={"accuracy": result["accuracy"], "n": result["n"], "backend": result["backend"]},
    )
