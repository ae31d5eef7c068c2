"""vLLM generation backend (GPU image only; imported lazily by the evaluate core).

Prompts are tokenized by the evaluate core, as for the transformers path, and handed to vLLM as token ids, so
both backends decode exactly the same inputs. An adapter is merged into the base weights first and the merged
checkpoint handed to vLLM: vLLM's LoRA support does not cover every module that PEFT's ``all-linear`` may
target (the vision tower), and a merged model decodes at base-model speed.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from typing import Any

from components.common.vllm_engine import engine_args, shutdown

log = logging.getLogger(__name__)


def sampling_args(*, do_sample: bool, temperature: float, top_p: float, top_k: int, max_new_tokens: int,
                  samples: int, seed: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams``: the evaluation's decoding (greedy: temperature 0)."""
    return {
        "n": samples,
        "temperature": temperature if do_sample else 0.0,
        "top_p": top_p if do_sample else 1.0,
        "top_k": top_k if (do_sample and top_k > 0) else -1,
        "max_tokens": max_new_tokens,
        "seed": seed,
        "detokenize": False,  # the evaluate core decodes token ids with the model's tokenizer, as for transformers
    }


def generate_ids(llm, prompts: Sequence[Sequence[int]], sampling: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """``sampling["n"]`` completions of every prompt (token ids in), as ``samples[k][row]`` dicts."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    outputs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], SamplingParams(**sampling),
                           use_tqdm=False)
    samples: list[list[dict[str, Any]]] = [[] for _ in range(sampling["n"])]
    for output in outputs:
        for k, choice in enumerate(output.outputs):
            samples[k].append({"token_ids": list(choice.token_ids), "truncated": choice.finish_reason == "length"})
    return samples


def generation_config_top_k(llm) -> int:
    """The model's generation-config top_k (64 for MedGemma), which the notebook's ``generate`` also applies."""
    return int(llm.llm_engine.model_config.get_diff_sampling_param().get("top_k", 0) or 0)


def _merged_checkpoint(model_id: str, adapter: str, spec, folder: str) -> str:
    from components.common.modeling import load_model, load_processor, save_for_serving

    model = load_model(model_id, dtype=spec.model.dtype, attn_implementation=spec.model.attn_implementation,
                       adapter=adapter, merge_adapter=True, device="cpu")
    save_for_serving(model, load_processor(model_id), folder)
    log.info("merged adapter into a temporary checkpoint for vLLM")
    return folder


def generate_with_vllm(model_id: str, adapter: str | None, prompts: Sequence[Sequence[int]], spec) -> tuple[list[list[dict[str, Any]]], int]:
    """Completions of every tokenized prompt, ``samples_per_question`` times, and the top_k used."""
    try:
        from vllm import LLM
    except ImportError as err:  # only the GPU image ships vLLM
        from components.common.errors import UserError

        raise UserError("evaluation.backend=vllm needs the vllm package (GPU image); use evaluation.backend=transformers") from err

    e = spec.evaluation
    with tempfile.TemporaryDirectory() as workdir:
        path = _merged_checkpoint(model_id, adapter, spec, workdir) if adapter else model_id
        llm = LLM(**engine_args(path, dtype=spec.model.dtype, seed=e.seed,
                                max_model_len=spec.data.max_prompt_tokens + e.max_new_tokens))
        try:
            top_k = generation_config_top_k(llm)
            samples = generate_ids(llm, prompts, sampling_args(
                do_sample=e.do_sample, temperature=e.temperature, top_p=e.top_p, top_k=top_k,
                max_new_tokens=e.max_new_tokens, samples=e.samples_per_question, seed=e.seed))
        finally:
            shutdown(llm)
    return samples, top_k
