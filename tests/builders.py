"""Valid documents that several test modules start from (built with the real schemas, not mocks)."""

from __future__ import annotations

from components.common.artifacts import Comparison


def passed_comparison(baseline_accuracy: float, tuned_accuracy: float) -> Comparison:
    """A comparison.json that passed the gate (register needs one to register a version)."""
    return Comparison(model="base", tuned_model="tuned", baseline_accuracy=baseline_accuracy,
                      tuned_accuracy=tuned_accuracy, delta=tuned_accuracy - baseline_accuracy, delta_ci_low=0.01,
                      delta_ci_high=0.4, test="mcnemar_exact", p_value=0.001, favours="tuned", passes_gate=True,
                      margin=0.0, alpha=0.05, n=20, samples_per_question={"baseline": 1, "tuned": 1},
                      questions_baseline_better=0, questions_tuned_better=5,
                      bootstrap={"resamples": 10, "seed": 0, "confidence": 0.95})
