"""KFP wrapper of the compare step (no @dsl.component here: images are bound in pipelines/)."""

from kfp.dsl import Artifact, Input, Markdown, Metrics, Output


def compare_evaluations_component(
    baseline_evaluation: Input[Artifact],
    tuned_evaluation: Input[Artifact],
    comparison: Output[Artifact],
    comparison_metrics: Output[Metrics],
    report: Output[Markdown],
    margin: float = 0.0,
    alpha: float = 0.05,
) -> bool:
    """Pair the base and tuned evaluations by question; return passes_gate (delta >= margin and p < alpha).

    ``comparison`` is the comparison.json file; ``report`` the results table shown in the Vertex UI. A single
    bool output, so that the pipeline can branch on it with ``dsl.If``.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from components.common.errors import exit_on_user_error
    from components.compare.core import COMPARISON_FILE, REPORT_FILE, compare_evaluations

    with tempfile.TemporaryDirectory() as workdir:
        with exit_on_user_error():
            result = compare_evaluations(
                baseline_evaluation.path, tuned_evaluation.path, workdir, margin=margin, alpha=alpha
            )
        for source, target in ((COMPARISON_FILE, comparison.path), (REPORT_FILE, report.path)):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(workdir) / source, target)
    for key in ("baseline_accuracy", "tuned_accuracy", "delta", "delta_ci_low", "delta_ci_high", "p_value", "n"):
        comparison_metrics.log_metric(key, result[key])
    comparison_metrics.log_metric("passes_gate", float(result["passes_gate"]))
    comparison.metadata.update({key: result[key] for key in ("passes_gate", "delta", "p_value", "test")})
    return bool(result["passes_gate"])
