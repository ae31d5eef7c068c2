"""vLLM generation backend (production GPU image only; imported lazily by the evaluate core).

An adapter is merged into the base weights first and the merged checkpoint handed to vLLM: vLLM's LoRA
support does not cover every module that PEFT's ``all-linear`` may target (the vision tower), and a
merged model decodes at base-model speed.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

log = logging.getLogger(__name__)


def _merged_checkpoint(model_id: str, adapter: str, spec, folder: str) -> str:
    from components.common.modeling import load_model, load_processor

    model = load_model(model_id, dtype=spec.model.dtype, attn_implementation=spec.model.attn_implementation, adapter=adapter, device="cpu")
    model.save_pretrained(folder)
    load_processor(model_id).save_pretrained(folder)
    log.info("merged adapter into a temporary checkpoint for vLLM")
    return folder


def generate_with_vllm(model_id: str, adapter: str | None, rows: list[dict[str, Any]], spec) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    """Completions for every row, ``samples_per_question`` times; vLLM batches and schedules by itself."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as err:  # only the GPU image ships vLLM
        from components.common.errors import UserError

        raise UserError("evaluation.backend=vllm needs the vllm package (GPU image); use backend=transformers") from err

    e = spec.evaluation
    with tempfile.TemporaryDirectory() as workdir:
        path = _merged_checkpoint(model_id, adapter, spec, workdir) if adapter else model_id
        llm = LLM(model=path, dtype=spec.model.dtype, seed=e.seed, max_model_len=spec.data.max_prompt_tokens + e.max_new_tokens)
        top_k = int(getattr(llm.get_tokenizer(), "top_k", 0) or 0)
        generation_config = llm.llm_engine.model_config.get_diff_sampling_param() if hasattr(llm, "llm_engine") else {}
        top_k = int(generation_config.get("top_k", top_k) or 0)
        params = SamplingParams(
            n=e.samples_per_question,
            temperature=e.temperature if e.do_sample else 0.0,
            top_p=e.top_p if e.do_sample else 1.0,
            top_k=top_k if (e.do_sample and top_k > 0) else -1,
            max_tokens=e.max_new_tokens,
            seed=e.seed,
        )
        outputs = llm.chat([row["prompt"] for row in rows], params, use_tqdm=False)
    samples: list[list[dict[str, Any]]] = [[] for _ in range(e.samples_per_question)]
    for output in outputs:
        for k, choice in enumerate(output.outputs):
            samples[k].append(
                {"completion": choice.text.strip(), "truncated": choice.finish_reason == "length", "tokens": len(choice.token_ids)}
            )
    return samples, e.decoding(top_k)
