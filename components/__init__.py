"""MedGemma GRPO pipeline steps.

Each step is a sub-package: ``core`` (plain Python, no KFP, no cloud), ``__main__`` (CLI over the core)
and ``component`` (thin KFP wrapper). Shared helpers live in :mod:`components.common`.
"""
