"""The decode step's attention (components/common/decode_attention.py) against the model's own, on CPU."""

import logging

import pytest


@pytest.fixture(scope="module")
def attention_setup(tiny_model_dir):
    import torch

    from components.common.modeling import load_model

    model = load_model(tiny_model_dir, dtype="float32", device="cpu")
    text = model.config.get_text_config()
    torch.manual_seed(0)
    for layer in model.model.language_model.layers:  # the tiny model's norms start at w = 0: make them count
        layer.self_attn.q_norm.weight.data.normal_(0, 0.5)
        layer.self_attn.k_norm.weight.data.normal_(0, 0.5)
    return model, text


def _decode_inputs(model, text, rows=3, slots=9, slot=5):
    """Hidden states of one new token a row, its rotary embedding, a mask bias, and two cache layers (for the
    model's attention and ours) holding the same random keys and values."""
    import torch

    from components.common.generation import _slot_static_layer_class

    language_model = model.model.language_model
    attention = language_model.layers[0].self_attn
    hidden = torch.randn(rows, 1, text.hidden_size)
    position = torch.tensor([[slot]] * rows)
    cos, sin = language_model.rotary_emb(hidden, position, text.layer_types[0])
    visible = torch.arange(slots) <= slot
    bias = torch.where(visible, 0.0, torch.finfo(torch.float32).min).expand(rows, 1, 1, slots).contiguous()
    layers = []
    kv = torch.randn(rows, text.num_key_value_heads, slots, attention.head_dim)
    for _ in range(2):
        layer = _slot_static_layer_class()(max_cache_len=slots)
        layer.lazy_initialization(kv, kv)
        layer.keys.copy_(kv)
        layer.values.copy_(-kv)
        layer.slots, layer.visible_length = torch.tensor([slot]), None
        layers.append(layer)
    return attention, hidden, (cos, sin), bias, layers


def _fused_qkv(attention):
    import torch

    return torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]).detach()


def test_decode_attention_computes_what_the_models_attention_does_and_writes_the_same_cache(attention_setup):
    import torch
    from transformers.cache_utils import Cache

    from components.common.decode_attention import DecodeAttention

    model, text = attention_setup
    attention, hidden, embeddings, bias, (theirs, ours) = _decode_inputs(model, text)
    cache = Cache(layers=[theirs] + [_decode_inputs(model, text)[4][0] for _ in range(text.num_hidden_layers - 1)])
    with torch.no_grad():
        expected, _ = attention(hidden, position_embeddings=embeddings, attention_mask=bias, cache=cache)
        decode = DecodeAttention.build(attention, _fused_qkv(attention), ours, compiled=False)
        assert decode is not None
        with decode.swapped_in():
            got, _ = attention(hidden, position_embeddings=embeddings, attention_mask=bias, cache=None)
    assert "forward" not in vars(attention)  # the swap is undone
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.keys, theirs.keys, rtol=1e-4, atol=1e-5)  # k normalised and rotated at slot 5
    torch.testing.assert_close(ours.values, theirs.values)


def test_decode_attention_is_built_only_for_gemma3_attention_as_the_model_defines_it(attention_setup, monkeypatch):
    from types import SimpleNamespace

    from components.common.decode_attention import DecodeAttention

    model, text = attention_setup
    attention = model.model.language_model.layers[0].self_attn
    weight, layer = _fused_qkv(attention), SimpleNamespace()

    def build():
        return DecodeAttention.build(attention, weight, layer, compiled=False)

    assert build() is not None
    # Liger's patch keeps the module and sets Gemma's offset, its casting mode and its own epsilon attribute.
    for norm in (attention.q_norm, attention.k_norm):
        monkeypatch.setattr(norm, "offset", 1.0, raising=False)
        monkeypatch.setattr(norm, "casting_mode", "gemma", raising=False)
        monkeypatch.setattr(norm, "variance_epsilon", 1e-5, raising=False)
    assert build() is not None and build().eps == 1e-5
    monkeypatch.setattr(attention.k_norm, "offset", 0.0)  # a Llama-style norm: x / rms * w
    assert build() is None
    monkeypatch.setattr(attention.k_norm, "offset", 1.0)
    monkeypatch.setattr(attention, "attn_logit_softcapping", 50.0)
    assert build() is None
    monkeypatch.setattr(attention, "attn_logit_softcapping", None)
    monkeypatch.setattr(attention.config, "_attn_implementation", "eager")
    assert build() is None
    monkeypatch.setattr(attention.config, "_attn_implementation", "sdpa")
    handle = attention.register_forward_hook(lambda *args: None)
    try:
        assert build() is None
    finally:
        handle.remove()
    weight = weight[:-1]  # not q, k and v of this layer
    assert build() is None


def test_a_failed_compile_falls_back_to_the_models_attention_for_the_process(attention_setup, monkeypatch, caplog):
    import torch
    from transformers.cache_utils import Cache

    from components.common import decode_attention

    model, text = attention_setup
    attention, hidden, embeddings, bias, (theirs, ours) = _decode_inputs(model, text)
    calls = []

    def failing_compile(*args):
        calls.append(1)
        raise torch._dynamo.exc.BackendCompilerFailed(lambda: None, RuntimeError("no compiler"), None)

    monkeypatch.setattr(decode_attention, "_COMPILE_FAILED", [])
    monkeypatch.setattr(decode_attention, "_compiled", lambda: failing_compile)
    cache = Cache(layers=[ours] + [_decode_inputs(model, text)[4][0] for _ in range(text.num_hidden_layers - 1)])
    first = decode_attention.DecodeAttention.build(attention, _fused_qkv(attention), ours, compiled=True)
    later = decode_attention.DecodeAttention.build(attention, _fused_qkv(attention), ours, compiled=True)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="components.common.decode_attention"):
        expected, _ = attention(hidden, position_embeddings=embeddings, attention_mask=bias,
                                cache=Cache(layers=[theirs] + cache.layers[1:]))
        for decode in (first, later):
            with decode.swapped_in():
                got, _ = attention(hidden, position_embeddings=embeddings, attention_mask=bias, cache=cache)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert calls == [1]  # the later one did not try again
    assert "torch.compile of the decode step's attention failed" in caplog.text
