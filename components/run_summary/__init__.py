"""How a pipeline run ended, in one summary: state, failed step, accuracies with CIs, p-value, registered model."""

from components.run_summary.core import build_summary, render_summary, summarize_run

__all__ = ["build_summary", "render_summary", "summarize_run"]
