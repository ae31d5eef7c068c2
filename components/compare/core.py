"""Compare two evaluations of the same questions: paired delta, bootstrap CI, exact McNemar test, gate."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from components.common.errors import UserError
from components.common.jsonl import read_jsonl, write_json
from components.common.stats import mcnemar_exact_p, paired_bootstrap_ci

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
COMPARISON_FILE = "comparison.json"
REPORT_FILE = "report.md"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
_SHOWN_IDS = 5


def _per_question_correct(eval_dir: str | Path, role: str) -> tuple[dict[str, float], dict[str, Any]]:
    """id -> fraction of correct samples (1 sample: 0 or 1), and the run's metrics.json (may be empty)."""
    eval_dir = Path(eval_dir)
    predictions = eval_dir / PREDICTIONS_FILE
    if not predictions.is_file():
        raise UserError(f"{role} evaluation {eval_dir} has no {PREDICTIONS_FILE}")
    totals: dict[str, list[int]] = {}
    for number, row in enumerate(read_jsonl(predictions), start=1):
        if "id" not in row or "correct" not in row:
            raise UserError(f"{predictions}: row {number} lacks 'id' or 'correct'")
        counts = totals.setdefault(str(row["id"]), [0, 0])
        counts[0] += bool(row["correct"])
        counts[1] += 1
    if not totals:
        raise UserError(f"{predictions} holds no predictions")
    metrics_path = eval_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    return {qid: right / seen for qid, (right, seen) in totals.items()}, metrics


def _check_same_questions(baseline: dict[str, float], tuned: dict[str, float]) -> None:
    only_baseline = sorted(set(baseline) - set(tuned))
    only_tuned = sorted(set(tuned) - set(baseline))
    if only_baseline or only_tuned:
        raise UserError(
            "baseline and tuned evaluations cover different questions: "
            f"{len(baseline)} vs {len(tuned)} ids; {len(only_baseline)} only in baseline "
            f"(e.g. {only_baseline[:_SHOWN_IDS]}), {len(only_tuned)} only in tuned (e.g. {only_tuned[:_SHOWN_IDS]}); "
            "evaluate both on the same test file with the same --limit"
        )


def _model_label(metrics: dict[str, Any], fallback: str) -> str:
    return str(metrics.get("model") or fallback)


def render_report(comparison: dict[str, Any]) -> str:
    """The notebook's results table plus the confidence interval and the test, as Markdown."""
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    signed_pts = lambda x: f"{100 * x:+.1f} pt"  # noqa: E731
    verdict = "passes" if comparison["passes_gate"] else "does not pass"
    lines = [
        "# MedQA test accuracy: before and after GRPO tuning",
        "",
        "| Model | Before (baseline) | After (tuned) | Delta | 95% CI of delta | p (exact McNemar) | n |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {comparison['model']} | {pct(comparison['baseline_accuracy'])} | {pct(comparison['tuned_accuracy'])} "
        f"| {signed_pts(comparison['delta'])} | [{signed_pts(comparison['delta_ci_low'])}, "
        f"{signed_pts(comparison['delta_ci_high'])}] | {comparison['p_value']:.3g} | {comparison['n']} |",
        "",
        f"Questions only the baseline answered correctly: {comparison['baseline_only_correct']}; "
        f"only the tuned model: {comparison['tuned_only_correct']}.",
        "",
        f"Gate: delta >= {signed_pts(comparison['margin'])} and p < {comparison['alpha']:g}: the tuned model **{verdict}**.",
        "",
    ]
    return "\n".join(lines)


def compare_evaluations(
    baseline_dir: str | Path,
    tuned_dir: str | Path,
    output_dir: str | Path,
    *,
    margin: float = 0.0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Pair two evaluate outputs by question id; write ``comparison.json`` and ``report.md``; return the comparison.

    With several samples per question, a question counts as correct for McNemar when most of its samples are
    (ties count as wrong); the delta and its bootstrap CI use the per-question fraction of correct samples.
    """
    if not (isinstance(margin, (int, float)) and math.isfinite(margin)):
        raise UserError(f"margin must be a finite number, got {margin!r}")
    if not 0 < alpha <= 1:
        raise UserError(f"alpha must be in (0, 1], got {alpha!r}")
    baseline, baseline_metrics = _per_question_correct(baseline_dir, "baseline")
    tuned, tuned_metrics = _per_question_correct(tuned_dir, "tuned")
    _check_same_questions(baseline, tuned)

    ids = sorted(baseline)
    n = len(ids)
    base_scores = [baseline[i] for i in ids]
    tuned_scores = [tuned[i] for i in ids]
    baseline_accuracy = sum(base_scores) / n
    tuned_accuracy = sum(tuned_scores) / n
    delta = tuned_accuracy - baseline_accuracy
    ci_low, ci_high = paired_bootstrap_ci(base_scores, tuned_scores, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
    base_right = [s > 0.5 for s in base_scores]
    tuned_right = [s > 0.5 for s in tuned_scores]
    baseline_only = sum(b and not t for b, t in zip(base_right, tuned_right))
    tuned_only = sum(t and not b for b, t in zip(base_right, tuned_right))
    p_value = mcnemar_exact_p(baseline_only, tuned_only)
    comparison = {
        "model": _model_label(baseline_metrics, "baseline"),
        "tuned_model": _model_label(tuned_metrics, "tuned"),
        "baseline_accuracy": baseline_accuracy,
        "tuned_accuracy": tuned_accuracy,
        "delta": delta,
        "delta_ci_low": ci_low,
        "delta_ci_high": ci_high,
        "p_value": p_value,
        # A tiny tolerance so that a delta equal to the margin (in float arithmetic) passes.
        "passes_gate": bool(delta >= margin - 1e-12 and p_value < alpha),
        "margin": margin,
        "alpha": alpha,
        "n": n,
        "baseline_only_correct": baseline_only,
        "tuned_only_correct": tuned_only,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "confidence": 0.95},
    }
    output_dir = Path(output_dir)
    write_json(output_dir / COMPARISON_FILE, comparison)
    (output_dir / REPORT_FILE).write_text(render_report(comparison), encoding="utf-8")
    log.info(
        "compared %d questions: baseline %.4f, tuned %.4f, delta %+.4f [%+.4f, %+.4f], p=%.3g, passes_gate=%s",
        n, baseline_accuracy, tuned_accuracy, delta, ci_low, ci_high, p_value, comparison["passes_gate"],
    )
    return comparison
