"""The static-cache CUDA-graph generator: completions for many prompts at once on a transformers Gemma 3.

One entry point, :func:`generate_completions` (token ids in, :class:`GeneratedSequence` out, in input order),
used by the evaluate step and by the GRPO rollout; :class:`SamplingSettings` says how to sample.
``STACKED_PROJECTIONS`` names the sibling projections the generator reads as one matmul: a caller that rewrites
weights (the rollout's LoRA merge) stacks them so, and the generator then takes them without a copy. The
benchmarks time single decode steps through :mod:`components.generator.step_timing`. See README.md here.
"""

from components.generator.engine import GeneratedSequence, generate_completions
from components.generator.projections import STACKED_PROJECTIONS
from components.generator.sampling import SamplingSettings

__all__ = ["STACKED_PROJECTIONS", "GeneratedSequence", "SamplingSettings", "generate_completions"]
