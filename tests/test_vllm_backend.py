"""The vLLM backend without a GPU: the arguments we hand vLLM, the weight names we save, the fall-back.

Facts taken from vLLM's source (0.26.0, run on the device, and 0.30.0, the lock's; identical in both):
``Gemma3ForConditionalGeneration.hf_to_vllm_mapper`` (model_executor/models/gemma3_mm.py) and the module tree
its loader fills (``language_model`` = Gemma3ForCausalLM, ``vision_tower`` = SiglipVisionModel whose weights sit
under ``vision_model``, ``multi_modal_projector``); ``EngineArgs.language_model_only`` (engine/arg_utils.py).
"""

from __future__ import annotations

import importlib.util

import pytest

from components.common import vllm_engine
from components.common.modeling import choose_generation_backend, hub_weight_name, save_for_serving
from components.evaluate.vllm_backend import sampling_args

VLLM_GEMMA3_MAPPER = {
    "model.language_model.": "language_model.model.",
    "model.vision_tower.": "vision_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "lm_head.": "language_model.lm_head.",
}
VLLM_GEMMA3_MODULES = ("language_model.model.", "language_model.lm_head.", "vision_tower.vision_model.",
                       "multi_modal_projector.")


def vllm_name(name: str) -> str:
    for old, new in VLLM_GEMMA3_MAPPER.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def test_engine_args_load_gemma3_text_only():
    assert vllm_engine.engine_args("/ckpt", dtype="bfloat16", seed=42, max_model_len=1024) == {
        "model": "/ckpt", "dtype": "bfloat16", "seed": 42, "max_model_len": 1024, "language_model_only": True,
    }


def test_sampling_args_follow_the_evaluation_decoding():
    sampled = sampling_args(do_sample=True, temperature=0.7, top_p=0.9, top_k=64, max_new_tokens=512, samples=3, seed=7)
    assert sampled == {"n": 3, "temperature": 0.7, "top_p": 0.9, "top_k": 64, "max_tokens": 512, "seed": 7,
                       "detokenize": False}
    greedy = sampling_args(do_sample=False, temperature=0.7, top_p=0.9, top_k=64, max_new_tokens=16, samples=1, seed=0)
    assert (greedy["temperature"], greedy["top_p"], greedy["top_k"]) == (0.0, 1.0, -1)
    no_top_k = sampling_args(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8, samples=1, seed=0)
    assert no_top_k["top_k"] == -1  # vLLM's "off"


def test_hub_weight_name_moves_only_the_flattened_vision_tower():
    assert hub_weight_name("vision_tower.encoder.layers.0.mlp.fc1.weight") == "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    assert hub_weight_name("vision_tower.vision_model.post_layernorm.bias") == "vision_tower.vision_model.post_layernorm.bias"
    assert hub_weight_name("language_model.model.layers.0.self_attn.q_proj.weight") == "language_model.model.layers.0.self_attn.q_proj.weight"


def test_merged_checkpoint_uses_the_names_vllm_loads(tiny_model_dir, tmp_path):
    """Base + a LoRA adapter merged and saved for serving: every name maps onto vLLM's Gemma 3 modules, no PEFT
    name is left, and transformers reads the same weights back."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    base = Gemma3ForConditionalGeneration.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    merged = peft_model.merge_and_unload()
    folder = save_for_serving(merged, AutoProcessor.from_pretrained(tiny_model_dir), tmp_path / "merged")

    names = [n for shard in folder.glob("*.safetensors") for n in safe_open(str(shard), "pt").keys()]
    assert names and not [n for n in names if "lora_" in n or "base_layer" in n]
    unmapped = [n for n in names if not vllm_name(n).startswith(VLLM_GEMMA3_MODULES)]
    assert unmapped == []
    assert any(n.startswith("vision_tower.vision_model.") for n in names)

    reloaded = Gemma3ForConditionalGeneration.from_pretrained(folder).state_dict()
    expected = merged.state_dict()
    assert reloaded.keys() == expected.keys()
    assert all(torch.equal(reloaded[k], expected[k]) for k in expected)


def test_trl_colocate_engine_is_built_text_only(monkeypatch):
    pytest.importorskip("trl")
    from trl.generation import vllm_generation

    built = []
    monkeypatch.setattr(vllm_generation, "LLM", lambda **kwargs: built.append(kwargs), raising=False)
    original = vllm_generation.LLM
    with vllm_engine.text_only_in_trl():
        vllm_generation.LLM(model="/ckpt", gpu_memory_utilization=0.35)
    assert built == [{"model": "/ckpt", "gpu_memory_utilization": 0.35, "language_model_only": True}]
    assert vllm_generation.LLM is original


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_without_vllm_the_backends_fall_back_or_fail_in_one_line(tiny_model_dir):
    from components.common.errors import UserError
    from components.common.recipes import load_recipe
    from components.evaluate.vllm_backend import generate_with_vllm

    assert choose_generation_backend("vllm") == "transformers"
    assert choose_generation_backend("auto") == "transformers"
    with pytest.raises(UserError, match="needs the vllm package"):
        generate_with_vllm(str(tiny_model_dir), None, [[2, 3]], load_recipe("tiny-cpu"))
