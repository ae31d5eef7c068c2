"""Tiny offline Gemma 3 checkpoint for tests and the local run (see :mod:`components.tiny_model.core`)."""

from components.tiny_model.core import build_tiny_model

__all__ = ["build_tiny_model"]
