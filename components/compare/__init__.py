"""Compare a baseline and a tuned evaluation: paired delta, bootstrap CI, paired test, promotion gate."""

from components.compare.core import compare_evaluations

__all__ = ["compare_evaluations"]
