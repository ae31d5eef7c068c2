"""The run's results table: per model, baseline and tuned accuracy (both scores), the paired delta, the test,
the gate and the registered version, as table.json, table.md and table.html.

Two steps: ``collect_model_result`` runs once per model (inside the pipeline's loop over models) and reduces
that model's two evaluations, its comparison and its registration to one model_result.json;
``write_results_table`` joins those files, in the order given, into the table.
"""

from __future__ import annotations

import hashlib
import html
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from components.common.artifacts import (
    Accuracy,
    Comparison,
    EvaluationMetrics,
    EvaluationScores,
    ModelResult,
    Prediction,
    ResultsTable,
    artifact_file,
    read_document,
    read_rows,
    validation_message,
    write_document,
)
from components.common.errors import UserError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # evaluate's
PREDICTIONS_FILE = "predictions.jsonl"  # evaluate's, next to its metrics.json
COMPARISON_FILE = "comparison.json"  # compare's
MODEL_RESULT_FILE = "model_result.json"
TABLE_JSON = "table.json"
TABLE_MARKDOWN = "table.md"
TABLE_HTML = "table.html"

STRICT_LABEL = "strict: one <answer> tag; what the reward and the gate use"
NOTEBOOK_LABEL = "notebook's rule: text after the last <answer>; reported only"
TEST_NAMES = {"mcnemar_exact": "exact McNemar", "paired_sign_flip": "paired sign-flip"}
# The numbers compare derived from the same predictions that evaluate summarised: equal up to rounding.
_SAME_NUMBER = 1e-9
# Vertex: projects/P/locations/L/models/ID@VERSION; file registry: <folder>/<model>/versions/VERSION.
_VERSION_PATTERNS = (re.compile(r"^projects/[^@]+/models/[^/@]+@(?P<version>[^/@]+)$"),
                     re.compile(r"[/\\]versions[/\\](?P<version>\d+)[/\\]?$"))


def registered_version(resource_name: str) -> str | None:
    """The version in register's resource name (Vertex) or folder (file registry); None when neither form."""
    for pattern in _VERSION_PATTERNS:
        match = pattern.search(resource_name)
        if match:
            return match.group("version")
    return None


def test_questions_digest(predictions_path: Path) -> str:
    """A short digest of the question ids an evaluation covered (its predictions.jsonl), order and samples aside."""
    ids = sorted({row.id for row in read_rows(Prediction, predictions_path)})
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def test_questions_note(table: ResultsTable) -> str | None:
    """Whether the rows can be compared with each other: the same test questions for every model, or not."""
    digests = {model.test_questions for model in table.models}
    if len(table.models) < 2 or None in digests:
        return None
    if len(digests) == 1:
        return f"Every model was evaluated on the same {table.models[0].n} test questions ({digests.pop()})."
    return ("The models were evaluated on different test questions (see n and each model's data prep): compare "
            "baseline and tuned within a row, not accuracies across rows.")


def _scores(metrics: EvaluationMetrics) -> EvaluationScores:
    return EvaluationScores(
        strict=Accuracy(accuracy=metrics.accuracy, ci_low=metrics.ci_low, ci_high=metrics.ci_high),
        notebook=Accuracy(accuracy=metrics.notebook_accuracy, ci_low=metrics.notebook_ci_low,
                          ci_high=metrics.notebook_ci_high),
        format_rate=metrics.format_rate,
    )


def _check_same_evaluation(comparison: Comparison, comparison_path: Path, metrics: EvaluationMetrics,
                           metrics_path: Path, side: str) -> None:
    """The comparison must have been made from these evaluations (a mis-wired loop would mix models)."""
    accuracy = getattr(comparison, f"{side}_accuracy")
    if comparison.n != metrics.n:
        raise UserError(f"{comparison_path}: n {comparison.n} differs from {metrics_path}'s {metrics.n}: "
                        f"the comparison was not made from this {side} evaluation")
    if not math.isclose(accuracy, metrics.accuracy, rel_tol=0, abs_tol=_SAME_NUMBER):
        raise UserError(f"{comparison_path}: {side}_accuracy {accuracy:.6g} differs from {metrics_path}'s "
                        f"{metrics.accuracy:.6g}: the comparison was not made from this {side} evaluation")


def _require_text(value: object, parameter: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise UserError(f"{parameter} must be a non-empty string, got {value!r}")
    return value


def collect_model_result(
    name: str,
    base_model: str,
    recipe: str,
    baseline_evaluation: str | Path,
    tuned_evaluation: str | Path,
    comparison: str | Path,
    registered: str,
    output: str | Path,
) -> ModelResult:
    """One model's row: reads the two evaluate outputs (folders or metrics.json files) and compare's
    comparison.json (or its folder); writes ``output`` (model_result.json) and returns it.

    ``registered``: register's resource name (Vertex) or folder (file registry), or "" when nothing was
    registered (the gate failed).
    """
    name = _require_text(name, "name").strip()
    base_model = _require_text(base_model, "base_model")
    recipe = _require_text(recipe, "recipe")
    registered = _require_text(registered, "registered", allow_empty=True).strip()
    baseline_path = artifact_file(baseline_evaluation, METRICS_FILE, "baseline_evaluation", "evaluate")
    tuned_path = artifact_file(tuned_evaluation, METRICS_FILE, "tuned_evaluation", "evaluate")
    comparison_path = artifact_file(comparison, COMPARISON_FILE, "comparison", "compare")
    baseline = read_document(EvaluationMetrics, baseline_path)
    tuned = read_document(EvaluationMetrics, tuned_path)
    paired = read_document(Comparison, comparison_path)
    _check_same_evaluation(paired, comparison_path, baseline, baseline_path, "baseline")
    _check_same_evaluation(paired, comparison_path, tuned, tuned_path, "tuned")
    if registered and not paired.passes_gate:
        raise UserError(f"registered is {registered!r}, but {comparison_path} says the tuned model failed the gate")
    predictions = baseline_path.with_name(PREDICTIONS_FILE)
    result = ModelResult(
        name=name,
        base_model=base_model,
        recipe=recipe,
        baseline=_scores(baseline),
        tuned=_scores(tuned),
        delta=paired.delta,
        delta_ci_low=paired.delta_ci_low,
        delta_ci_high=paired.delta_ci_high,
        test=paired.test,
        p_value=paired.p_value,
        n=paired.n,
        passes_gate=paired.passes_gate,
        registered=registered or None,
        registered_version=registered_version(registered) if registered else None,
        test_questions=test_questions_digest(predictions) if predictions.is_file() else None,
    )
    write_document(output, result)
    log.info("model %s: strict %.4f -> %.4f (delta %+.4f, p=%.3g), gate %s, registered %s", name,
             baseline.accuracy, tuned.accuracy, paired.delta, paired.p_value,
             "passed" if paired.passes_gate else "failed", registered or "no")
    return result


def read_model_results(paths: Sequence[str | Path]) -> ResultsTable:
    """The model_result.json files (or their folders), in the order given; duplicate names are refused."""
    if not paths:
        raise UserError("model_results: no model results given (the run needs at least one model)")
    models: list[ModelResult] = []
    where: dict[str, Path] = {}
    for path in paths:
        path = artifact_file(path, MODEL_RESULT_FILE, "model_results", "the model-result step")
        model = read_document(ModelResult, path)
        if model.name in where:
            raise UserError(f"model_results: model name {model.name!r} appears in both {where[model.name]} and "
                            f"{path}; every model of a run needs its own name")
        where[model.name] = path
        models.append(model)
    try:
        return ResultsTable(models=models)
    except ValidationError as err:
        raise UserError(f"model_results: {validation_message(err)}") from None


# ---------------------------------------------------------------------------------------------- rendering


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _accuracy(score: Accuracy) -> str:
    return f"{_pct(score.accuracy)} [{100 * score.ci_low:.1f}, {100 * score.ci_high:.1f}]"


def _delta(model: ModelResult) -> str:
    return f"{100 * model.delta:+.1f} pt [{100 * model.delta_ci_low:+.1f}, {100 * model.delta_ci_high:+.1f}]"


def _registered(model: ModelResult) -> str:
    if model.registered is None:
        return "not registered"
    if model.registered_version is None:
        return model.registered
    return f"version {model.registered_version}: {model.registered}"


COLUMNS = (
    "Model", "Base model", "Recipe", "n",
    "Strict: baseline [95% CI]", "Strict: tuned [95% CI]",
    "Notebook's rule: baseline [95% CI]", "Notebook's rule: tuned [95% CI]",
    "Delta, strict [95% CI]", "Paired test (strict), p", "Format rate: baseline -> tuned", "Gate", "Registered",
)


def table_rows(table: ResultsTable) -> list[tuple[str, ...]]:
    """The table's cells as plain text, one tuple per model (COLUMNS' order)."""
    return [
        (
            m.name, m.base_model, m.recipe, str(m.n),
            _accuracy(m.baseline.strict), _accuracy(m.tuned.strict),
            _accuracy(m.baseline.notebook), _accuracy(m.tuned.notebook),
            _delta(m), f"{TEST_NAMES[m.test]}, p = {m.p_value:.3g}",
            f"{_pct(m.baseline.format_rate)} -> {_pct(m.tuned.format_rate)}",
            "passed" if m.passes_gate else "failed", _registered(m),
        )
        for m in table.models
    ]


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~])")


def _markdown_cell(text: str) -> str:
    """Plain text as one Markdown table cell: no markup, no HTML, no cell break."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


TITLE = "MedQA test accuracy by model: before and after GRPO tuning"
FORMAT_RATE_NOTE = "Format rate: samples whose completion holds exactly one <answer> pair with an option letter."
GATE_NOTE = ("Gate (compare step, strict score): passed when the delta reaches the run's margin, p is below its "
             "alpha and the test favours the tuned model; only a model that passed is registered.")


def render_markdown(table: ResultsTable) -> str:
    """The table as Markdown; every string from the run is escaped, so none can add markup."""
    lines = [
        f"# {TITLE}",
        "",
        f"- {_markdown_cell(STRICT_LABEL)}",
        f"- {_markdown_cell(NOTEBOOK_LABEL)}",
        "",
        "| " + " | ".join(_markdown_cell(c) for c in COLUMNS) + " |",
        "|" + " --- |" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in table_rows(table)]
    lines += ["", _markdown_cell(FORMAT_RATE_NOTE), "", _markdown_cell(GATE_NOTE), ""]
    if note := test_questions_note(table):
        lines += [_markdown_cell(note), ""]
    return "\n".join(lines)


_STYLE = (
    "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;white-space:nowrap}"
    "th{background:#f3f3f3}td.num{text-align:right}"
)
_NUMERIC_COLUMNS = frozenset(range(3, 11))


def render_html(table: ResultsTable) -> str:
    """The table as one self-contained HTML page (the Vertex UI shows it as an HTML artifact); all text escaped."""
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    cell_tags = ['<td class="num">' if i in _NUMERIC_COLUMNS else "<td>" for i in range(len(COLUMNS))]
    body = "".join(
        "<tr>" + "".join(f"{tag}{e(cell)}</td>" for tag, cell in zip(cell_tags, row)) + "</tr>\n"
        for row in table_rows(table)
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{e(TITLE)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{e(TITLE)}</h1>\n"
        f"<ul>\n<li>{e(STRICT_LABEL)}</li>\n<li>{e(NOTEBOOK_LABEL)}</li>\n</ul>\n"
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"
        f"<p>{e(FORMAT_RATE_NOTE)}</p>\n<p>{e(GATE_NOTE)}</p>\n"
        + (f"<p>{e(note)}</p>\n" if (note := test_questions_note(table)) else "")
        + "</body>\n</html>\n"
    )


def write_results_table(model_result_paths: Sequence[str | Path], output_dir: str | Path,
                        order: Sequence[str] = ()) -> ResultsTable:
    """Join the model results into ``output_dir``/table.json, table.md and table.html: in ``order`` (model names;
    the run's plan, since a collected list need not keep the loop's order), else in the order given."""
    table = read_model_results(model_result_paths)
    if order:
        unplanned = [model.name for model in table.models if model.name not in order]
        if unplanned:
            raise UserError(f"model results for {', '.join(map(repr, unplanned))}, which the run did not plan")
        table = ResultsTable(models=sorted(table.models, key=lambda model: list(order).index(model.name)))
    output_dir = Path(output_dir)
    write_document(output_dir / TABLE_JSON, table)
    (output_dir / TABLE_MARKDOWN).write_text(render_markdown(table), encoding="utf-8")
    (output_dir / TABLE_HTML).write_text(render_html(table), encoding="utf-8")
    log.info("results table of %d model(s) written to %s", len(table.models), output_dir)
    return table
