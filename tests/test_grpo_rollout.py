"""The training step's fast rollout on CPU: merged LoRA weights compute what the adapters compute, and
train_grpo runs end to end through it (the CUDA graph itself only runs on a GPU: bench/bench_grpo_step.py)."""

from __future__ import annotations

import json


def _peft_tiny(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear"))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter change the output
            param.data.normal_(0, 0.05)
    return peft_model.eval()


def test_merged_lora_weights_match_the_adapters_and_are_put_back(tiny_model_dir):
    import torch

    from components.grpo_train.rollout import merged_lora_weights

    peft_model = _peft_tiny(tiny_model_dir)
    base = peft_model.get_base_model()
    ids = torch.randint(10, 500, (2, 12))
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    with torch.no_grad():
        with_adapters = base(input_ids=ids).logits
        with peft_model.disable_adapter():
            without = base(input_ids=ids).logits
        with merged_lora_weights(peft_model) as merged:
            assert merged
            with_merged = base(input_ids=ids).logits
    assert (with_adapters - without).abs().max() > 1e-3, "the adapter changes the output"
    torch.testing.assert_close(with_merged, with_adapters, rtol=1e-4, atol=1e-4)
    after = dict(peft_model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before), "trained and base weights untouched"
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=ids).logits, with_adapters)


def test_generation_fuses_projections_only_where_they_compute_a_plain_matmul(tiny_model_dir):
    """Live adapters add to a projection: fusing it would drop them. Merged (the rollout) or switched off, the
    projections are plain, and the fused weights built inside the merge are the merged ones."""
    import torch

    from components.generator.projections import (FusedProjections, fusable_projections, fused_weight_bytes,
                                                  stacked_copy_bytes)
    from components.grpo_train.rollout import merged_lora_weights

    peft_model = _peft_tiny(tiny_model_dir)
    language_model = peft_model.get_base_model().model.language_model
    attention = language_model.layers[0].self_attn
    assert fusable_projections(language_model) == []
    with merged_lora_weights(peft_model):
        groups = fusable_projections(language_model)
        assert len(groups) == len(language_model.layers)
        merged_q = attention.q_proj.get_base_layer().weight.detach().clone()
        fused = FusedProjections(*groups[0])
        # The merge stacks q, k and v (and gate, up) in one tensor: the generator takes them as they lie.
        assert fused_weight_bytes(groups) == 0
        assert fused.weight.data_ptr() == attention.q_proj.get_base_layer().weight.data_ptr()
        mlp = language_model.layers[0].mlp
        assert stacked_copy_bytes([mlp.gate_proj.get_base_layer().weight, mlp.up_proj.get_base_layer().weight]) == 0
    base_q = attention.q_proj.get_base_layer().weight.detach()
    q_rows = base_q.shape[0]
    assert torch.equal(fused.weight[:q_rows], merged_q) and not torch.equal(merged_q, base_q)
    with peft_model.disable_adapter():
        assert len(fusable_projections(language_model)) == len(language_model.layers)
        assert fused_weight_bytes(fusable_projections(language_model)) > 0  # separate tensors: copied
    # PEFT's own merge: plain while merged; merged and switched off, its forward would unmerge first.
    peft_model.merge_adapter()
    assert len(fusable_projections(language_model)) == len(language_model.layers)
    with peft_model.disable_adapter():
        assert fusable_projections(language_model) == []
    # A hook on a projection would be skipped by the fused matmul: that layer is left as it is.
    handle = attention.k_proj.get_base_layer().register_forward_hook(lambda *args: None)
    assert len(fusable_projections(language_model)) == len(language_model.layers) - 1
    handle.remove()


def test_lora_inputs_skip_the_fp32_round_trip_under_bf16_autocast_with_identical_results(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from components.grpo_train.core import _skip_lora_input_casts

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear"))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            assert param.dtype == torch.float32  # PEFT keeps adapters in fp32 on a bf16 model
            if "lora_B" in name:
                param.data.normal_(0, 0.05)
    ids = torch.randint(10, 500, (2, 12))

    def logits_and_grads():
        peft_model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as TRL's accelerator.autocast() with bf16
            logits = peft_model(input_ids=ids).logits
        logits.float().square().mean().backward()
        # (the vision tower's adapters get no gradient from text-only input)
        return logits, {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}

    with_casts, grads_with_casts = logits_and_grads()
    assert _skip_lora_input_casts(peft_model) > 0
    without_casts, grads_without_casts = logits_and_grads()
    assert torch.equal(with_casts, without_casts)
    assert len(grads_with_casts) > 10 and grads_with_casts.keys() == grads_without_casts.keys()
    assert all(torch.equal(grads_with_casts[n], grads_without_casts[n]) for n in grads_with_casts)


def test_unmerged_rollout_gets_the_lora_input_casts_back(tiny_model_dir, monkeypatch):
    import contextlib

    import pytest
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from components.grpo_train import rollout
    from components.grpo_train.core import _skip_lora_input_casts

    # Adapters that cannot be merged (DoRA, an adapted embedding, ...): merged_lora_weights yields False.
    monkeypatch.setattr(rollout, "merged_lora_weights", lambda model: contextlib.nullcontext(False))

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear"))
    ids = torch.randint(10, 500, (2, 12))
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        _skip_lora_input_casts(peft_model)
        # Outside autocast, bf16 inputs meet fp32 adapters: what an unmerged rollout would hit.
        with pytest.raises(RuntimeError, match="dtype"):
            peft_model(input_ids=ids)
        with rollout.weights_for_generation(peft_model):
            assert torch.equal(peft_model(input_ids=ids).logits, expected)
    assert not any(m.cast_input_dtype_enabled for m in peft_model.modules() if hasattr(m, "cast_input_dtype_enabled"))


def test_train_grpo_through_the_static_graph_rollout(tiny_model_dir, prepared_demo_dir, tmp_path, monkeypatch):
    from components.generator import engine
    from components.grpo_train.core import train_grpo
    from components.grpo_train.job import TrainingJob

    decode_layers_built = []
    build = engine.StaticBatchGenerator._decode_layers

    def recording_build(self):
        layers = build(self)
        decode_layers_built.append(len(layers))
        return layers

    monkeypatch.setattr(engine.StaticBatchGenerator, "_decode_layers", recording_build)
    out = tmp_path / "train"
    outcome = train_grpo(TrainingJob.build(
        "tiny-cpu", prepared_demo_dir, out, model=tiny_model_dir, show_progress=False, rollout="static-graph",
        overrides=["train.per_device_train_batch_size=8", "train.max_completion_length=8", "train.max_steps=2",
                   "train.save_strategy='no'"]))
    summary = json.loads((out / "adapter" / "training_summary.json").read_text())
    assert outcome.global_step == 2 and summary["rollout"] == "static-graph"
    assert len(summary["rollout_seconds"]) == 2 and len(summary["step_seconds"]) == 2
    phases = summary["rollout_phase_seconds"]
    assert [set(p) for p in phases] == [{"merge", "capture", "prefill", "decode"}] * 2
    assert all(p["prefill"] > 0 and p["decode"] > 0 for p in phases)
    # The phases are parts of the call (rounded to 3 decimals, the call to 2).
    assert all(sum(p.values()) <= total + 0.01 for p, total in zip(phases, summary["rollout_seconds"]))
    assert 0 < summary["metrics"]["completion_mean_length"] <= 8
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(tiny_model_dir).get_text_config().num_hidden_layers
    assert decode_layers_built == [layers] * 2  # every rollout runs the decode step through DecodeLayers


def test_expandable_segments_are_asked_for_unless_the_user_chose(monkeypatch):
    import os

    from components.common.modeling import prefer_expandable_segments

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    prefer_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    prefer_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"
