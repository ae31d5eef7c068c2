"""The run's results table: per model, both scores before and after tuning, the paired delta, gate and registration."""

from components.results_table.core import collect_model_result, write_results_table

__all__ = ["collect_model_result", "write_results_table"]
