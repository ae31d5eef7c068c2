"""Check a pipeline run's parameters before any work, and pick where training runs."""

from components.preflight.core import check_run_parameters, training_route

__all__ = ["check_run_parameters", "training_route"]
