"""vLLM engine settings shared by evaluation and GRPO training (vllm itself is imported only on GPU images).

MedQA prompts carry no images, so Gemma 3 runs text-only in vLLM (``language_model_only``): the vision tower
is neither built nor loaded, and vLLM skips its image-profiling call, which transformers 5's Gemma3Processor
rejects ("Found 1 <start_of_image> tokens in the text but no images were passed").
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

TEXT_ONLY_ENGINE_ARGS: dict[str, Any] = {"language_model_only": True}


def engine_args(model_path: str, *, dtype: str, seed: int, max_model_len: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for one of our checkpoints (or a hub id)."""
    return {"model": model_path, "dtype": dtype, "seed": seed, "max_model_len": max_model_len, **TEXT_ONLY_ENGINE_ARGS}


def shutdown(llm) -> None:
    """Stop the engine now: otherwise the engine's worker process outlives the step."""
    engine = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine is not None and hasattr(engine, "shutdown"):
        engine.shutdown()
    log.info("vLLM engine shut down")


@contextlib.contextmanager
def text_only_in_trl() -> Iterator[None]:
    """TRL's colocate mode builds ``vllm.LLM`` itself, with no way to pass engine arguments: add ours meanwhile."""
    from trl.generation import vllm_generation

    original = vllm_generation.LLM
    vllm_generation.LLM = functools.partial(original, **TEXT_ONLY_ENGINE_ARGS)
    try:
        yield
    finally:
        vllm_generation.LLM = original
