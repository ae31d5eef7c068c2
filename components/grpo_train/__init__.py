"""GRPO + LoRA training step (see :mod:`components.grpo_train.core`)."""

from components.grpo_train.core import train_grpo

__all__ = ["train_grpo"]
