"""Evaluate a model (base or base + adapter) on the MedQA test split: accuracy with CI, format and truncation rates."""

from components.evaluate.core import evaluate_model

__all__ = ["evaluate_model"]
