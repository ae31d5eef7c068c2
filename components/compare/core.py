"""Compare two evaluations of the same questions: paired delta, bootstrap CI, a paired test, gate.

All of it uses the strict score (``correct``); the notebook's score (``notebook_correct``) is carried along
for the report only, never gated.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common.artifacts import (
    Comparison,
    EvaluationMetrics,
    Prediction,
    read_document,
    read_rows,
    write_document,
)
from components.common.errors import UserError
from components.common.stats import mcnemar_exact_p, paired_bootstrap_ci, paired_sign_flip_p

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
COMPARISON_FILE = "comparison.json"
REPORT_FILE = "report.md"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
SIGN_FLIP_RESAMPLES = 100_000
SIGN_FLIP_SEED = 0
_SHOWN_IDS = 5


@dataclass(frozen=True)
class QuestionScores:
    """Per-question mean correctness of one evaluation, and how many samples each question had."""

    scores: dict[str, float]
    samples_per_question: int
    notebook_accuracy: float | None = None  # over all samples; None when a prediction lacks notebook_correct


def question_scores(predictions: list[Prediction], name: str) -> QuestionScores:
    """id -> fraction of correct samples. Every question needs the same samples 0..k-1 (or, with k = 1, no
    ``sample`` field); a repeated (id, sample) is an error, not an extra sample."""
    if not predictions:
        raise UserError(f"{name} holds no predictions")
    with_sample = [p.sample is not None for p in predictions]
    if any(with_sample) and not all(with_sample):
        line = with_sample.index(False) + 1 if with_sample[0] else with_sample.index(True) + 1
        raise UserError(f"{name} row {line}: field 'sample': some rows have it and some do not")
    seen: dict[tuple[str, int], int] = {}
    totals: dict[str, list[int]] = {}
    for number, p in enumerate(predictions, start=1):
        key = (p.id, p.sample or 0)
        if key in seen:
            what = f"id {p.id!r}" + (f" sample {p.sample}" if p.sample is not None else "")
            raise UserError(f"{name} row {number}: duplicated prediction for {what} (also row {seen[key]})")
        seen[key] = number
        counts = totals.setdefault(p.id, [0, 0])
        counts[0] += p.correct
        counts[1] += 1
    sample_counts = {seen_count for _, seen_count in totals.values()}
    if len(sample_counts) > 1:
        fewest = min(totals, key=lambda qid: totals[qid][1])
        raise UserError(
            f"{name}: questions have different numbers of samples ({sorted(sample_counts)}), "
            f"e.g. id {fewest!r} has {totals[fewest][1]}"
        )
    k = sample_counts.pop()
    if all(p.sample is not None for p in predictions) and {p.sample for p in predictions} != set(range(k)):
        raise UserError(f"{name}: field 'sample' must run 0..{k - 1} for every question")
    notebook = [p.notebook_correct for p in predictions]
    notebook_accuracy = None if None in notebook else sum(notebook) / len(notebook)
    scores = {qid: right / seen_count for qid, (right, seen_count) in totals.items()}
    return QuestionScores(scores, k, notebook_accuracy)


def read_evaluation(eval_dir: str | Path, role: str) -> tuple[QuestionScores, EvaluationMetrics | None]:
    """An evaluate output folder: its per-question scores and its metrics.json (None when absent)."""
    eval_dir = Path(eval_dir)
    predictions = eval_dir / PREDICTIONS_FILE
    if not predictions.is_file():
        raise UserError(f"{role} evaluation {eval_dir} has no {PREDICTIONS_FILE}")
    scores = question_scores(read_rows(Prediction, predictions), str(predictions))
    metrics_path = eval_dir / METRICS_FILE
    metrics = read_document(EvaluationMetrics, metrics_path) if metrics_path.is_file() else None
    return scores, metrics


@dataclass(frozen=True)
class PairedResult:
    """The delta of mean per-question correctness and the paired test of that same quantity."""

    n: int
    baseline_accuracy: float
    tuned_accuracy: float
    delta: float
    test: str
    p_value: float
    favours: str
    questions_baseline_better: int
    questions_tuned_better: int
    sign_flip_resamples: int | None


def paired_test(baseline: QuestionScores, tuned: QuestionScores) -> PairedResult:
    """Paired test on the questions both cover (the caller checks they are the same set).

    One sample per question on both sides: exact McNemar on the 0/1 scores. Otherwise a paired sign-flip test
    on per-question mean correctness. Either way the test's statistic is the sum of the per-question
    differences, so its direction is the delta's.
    """
    ids = sorted(baseline.scores)
    base = [baseline.scores[i] for i in ids]
    tuned_scores = [tuned.scores[i] for i in ids]
    differences = [t - b for b, t in zip(base, tuned_scores)]
    baseline_better = sum(d < 0 for d in differences)
    tuned_better = sum(d > 0 for d in differences)
    if baseline.samples_per_question == tuned.samples_per_question == 1:
        test, p_value, resamples = "mcnemar_exact", mcnemar_exact_p(baseline_better, tuned_better), None
    else:
        resamples = SIGN_FLIP_RESAMPLES
        test = "paired_sign_flip"
        p_value = paired_sign_flip_p(differences, resamples=resamples, seed=SIGN_FLIP_SEED)
    n = len(ids)
    total = sum(differences)
    favours = "tuned" if total > 0 else "baseline" if total < 0 else "neither"
    return PairedResult(
        n=n,
        baseline_accuracy=sum(base) / n,
        tuned_accuracy=sum(tuned_scores) / n,
        delta=sum(tuned_scores) / n - sum(base) / n,
        test=test,
        p_value=p_value,
        favours=favours,
        questions_baseline_better=baseline_better,
        questions_tuned_better=tuned_better,
        sign_flip_resamples=resamples,
    )


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


def _model_label(metrics: EvaluationMetrics | None, fallback: str) -> str:
    return metrics.model if metrics is not None and metrics.model else fallback


TEST_NAMES = {"mcnemar_exact": "exact McNemar", "paired_sign_flip": "paired sign-flip"}


def render_report(comparison: Comparison) -> str:
    """The notebook's results table plus the confidence interval and the test, as Markdown."""
    pct = lambda x: f"{100 * x:.1f}%" if x is not None else "n/a"  # noqa: E731
    signed_pts = lambda x: f"{100 * x:+.1f} pt"  # noqa: E731
    c = comparison
    verdict = "passes" if c.passes_gate else "does not pass"
    if c.test == "mcnemar_exact":
        counts = (f"Questions only the baseline answered correctly: {c.questions_baseline_better}; "
                  f"only the tuned model: {c.questions_tuned_better}.")
    else:
        k = c.samples_per_question
        counts = (f"Samples per question: baseline {k['baseline']}, tuned {k['tuned']}. Questions where the baseline "
                  f"scored higher: {c.questions_baseline_better}; the tuned model: {c.questions_tuned_better}.")
    lines = [
        "# MedQA test accuracy: before and after GRPO tuning",
        "",
        "| Model | strict (gate): before | strict (gate): after | Delta | 95% CI of delta "
        f"| p ({TEST_NAMES[c.test]}) | notebook's extraction: before | notebook's extraction: after | n |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {c.model} | {pct(c.baseline_accuracy)} | {pct(c.tuned_accuracy)} "
        f"| {signed_pts(c.delta)} | [{signed_pts(c.delta_ci_low)}, "
        f"{signed_pts(c.delta_ci_high)}] | {c.p_value:.3g} "
        f"| {pct(c.baseline_notebook_accuracy)} | {pct(c.tuned_notebook_accuracy)} | {c.n} |",
        "",
        counts,
        "",
        "Strict: exactly one `<answer>` pair holding one option letter (the reward's rule); the delta, its CI, "
        "the test and the gate use it. Notebook's extraction: the text after the last `<answer>` equals the gold "
        "letter, so a bare letter counts; shown to compare with the notebook's table, never gated.",
        "",
        f"Gate: delta >= {signed_pts(c.margin)}, p < {c.alpha:g} and the test favours the tuned model: "
        f"the tuned model **{verdict}**.",
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

    Scores are per-question mean correctness (0 or 1 with one sample). The delta, its bootstrap CI and the
    test all use them; the gate needs delta >= margin, p < alpha and the test favouring the tuned model.
    """
    if isinstance(margin, bool) or not (isinstance(margin, (int, float)) and math.isfinite(margin)):
        raise UserError(f"margin must be a finite number, got {margin!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise UserError(f"alpha must be in (0, 1], got {alpha!r}")
    baseline, baseline_metrics = read_evaluation(baseline_dir, "baseline")
    tuned, tuned_metrics = read_evaluation(tuned_dir, "tuned")
    _check_same_questions(baseline.scores, tuned.scores)

    result = paired_test(baseline, tuned)
    ids = sorted(baseline.scores)
    ci_low, ci_high = paired_bootstrap_ci(
        [baseline.scores[i] for i in ids], [tuned.scores[i] for i in ids],
        resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED,
    )
    comparison = Comparison(
        model=_model_label(baseline_metrics, "baseline"),
        tuned_model=_model_label(tuned_metrics, "tuned"),
        baseline_accuracy=result.baseline_accuracy,
        tuned_accuracy=result.tuned_accuracy,
        baseline_notebook_accuracy=baseline.notebook_accuracy,
        tuned_notebook_accuracy=tuned.notebook_accuracy,
        delta=result.delta,
        delta_ci_low=ci_low,
        delta_ci_high=ci_high,
        test=result.test,
        p_value=result.p_value,
        favours=result.favours,
        # A tiny tolerance so that a delta equal to the margin (in float arithmetic) passes.
        passes_gate=bool(result.delta >= margin - 1e-12 and result.p_value < alpha and result.favours == "tuned"),
        margin=float(margin),
        alpha=float(alpha),
        n=result.n,
        samples_per_question={"baseline": baseline.samples_per_question, "tuned": tuned.samples_per_question},
        questions_baseline_better=result.questions_baseline_better,
        questions_tuned_better=result.questions_tuned_better,
        bootstrap={"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "confidence": 0.95},
        sign_flip_resamples=result.sign_flip_resamples,
    )
    output_dir = Path(output_dir)
    write_document(output_dir / COMPARISON_FILE, comparison)
    (output_dir / REPORT_FILE).write_text(render_report(comparison), encoding="utf-8")
    log.info(
        "compared %d questions: baseline %.4f, tuned %.4f, delta %+.4f [%+.4f, %+.4f], %s p=%.3g, passes_gate=%s",
        result.n, result.baseline_accuracy, result.tuned_accuracy, result.delta, ci_low, ci_high, result.test,
        result.p_value, comparison.passes_gate,
    )
    return comparison.model_dump(mode="json")
