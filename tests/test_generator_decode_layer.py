"""The decode step's decoder layer (components/generator/decode_layer.py) against the model's own, on CPU."""

import logging

import pytest


@pytest.fixture(scope="module")
def tiny_float32(tiny_model_dir):
    import torch

    from components.common.modeling import load_model

    model = load_model(tiny_model_dir, dtype="float32", device="cpu")
    torch.manual_seed(0)
    for layer in model.model.language_model.layers:
        # A scale that is not sdpa's default (the tiny model's query_pre_attn_scalar is its head_dim).
        layer.self_attn.scaling = 0.3
        # The tiny model's norms start at w = 0: make them count.
        for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm, layer.input_layernorm,
                     layer.post_attention_layernorm, layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm):
            norm.weight.data.normal_(0, 0.5)
    return model, model.config.get_text_config()


def _decode_inputs(model, text, rows=3, slots=9, slot=5):
    """Layer 0, hidden states of one new token a row, its rotary embedding, a mask bias, and two caches (for the
    model's layer and ours) holding the same random keys and values."""
    import torch
    from transformers.cache_utils import Cache

    from components.generator.engine import _slot_static_layer_class

    language_model = model.model.language_model
    hidden = torch.randn(rows, 1, text.hidden_size)
    cos, sin = language_model.rotary_emb(hidden, torch.tensor([[slot]] * rows), text.layer_types[0])
    visible = torch.arange(slots) <= slot
    bias = torch.where(visible, 0.0, torch.finfo(torch.float32).min).expand(rows, 1, 1, slots).contiguous()
    kv = torch.randn(rows, text.num_key_value_heads, slots, language_model.layers[0].self_attn.head_dim)
    caches = []
    for _ in range(2):
        layers = [_slot_static_layer_class()(max_cache_len=slots) for _ in range(text.num_hidden_layers)]
        for layer in layers:
            layer.lazy_initialization(kv, kv)
            layer.keys.copy_(kv)
            layer.values.copy_(-kv)
            layer.slots, layer.visible_length = torch.tensor([slot]), None
        caches.append(Cache(layers=layers))
    return language_model.layers[0], hidden, (cos, sin), bias, caches


def _fused_qkv(layer):
    import torch

    attention = layer.self_attn
    return torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]).detach()


def _run(layer, hidden, embeddings, bias, cache):
    return layer(hidden, position_embeddings=embeddings, attention_mask=bias, cache=cache)


def test_decode_layer_computes_what_the_models_layer_does_and_writes_the_same_cache(tiny_float32):
    import torch

    from components.generator.decode_layer import DecodeLayer

    model, text = tiny_float32
    layer, hidden, embeddings, bias, (theirs, ours) = _decode_inputs(model, text)
    with torch.no_grad():
        expected = _run(layer, hidden, embeddings, bias, theirs)
        decode = DecodeLayer.build(layer, _fused_qkv(layer), ours.layers[0], compiled=False)
        assert decode is not None
        with decode.swapped_in():
            got = _run(layer, hidden, embeddings, bias, None)  # ours writes its own cache layer
    assert "forward" not in vars(layer)  # the swap is undone
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # k normalised and rotated, and v, at slot 5; nothing else changed
    torch.testing.assert_close(ours.layers[0].keys, theirs.layers[0].keys, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.layers[0].values, theirs.layers[0].values)


def test_decode_layer_is_built_only_for_gemma3_layers_as_the_model_defines_them(tiny_float32, monkeypatch):
    from types import SimpleNamespace

    from components.generator.decode_layer import DecodeLayer

    model, text = tiny_float32
    layer = model.model.language_model.layers[0]
    attention = layer.self_attn
    weight, cache_layer = _fused_qkv(layer), SimpleNamespace()

    def build():
        return DecodeLayer.build(layer, weight, cache_layer, compiled=False)

    assert build() is not None
    # Liger's patch keeps the modules and sets Gemma's offset, its casting mode and its own epsilon attribute.
    norms = [attention.q_norm, attention.k_norm, layer.input_layernorm, layer.post_attention_layernorm,
             layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm]
    for norm in norms:
        monkeypatch.setattr(norm, "offset", 1.0, raising=False)
        monkeypatch.setattr(norm, "casting_mode", "gemma", raising=False)
        monkeypatch.setattr(norm, "variance_epsilon", 1e-5, raising=False)
    assert build() is not None and build().eps == 1e-5
    monkeypatch.setattr(layer.pre_feedforward_layernorm, "variance_epsilon", 1e-6)  # norms of two epsilons
    assert build() is None
    monkeypatch.setattr(layer.pre_feedforward_layernorm, "variance_epsilon", 1e-5)
    monkeypatch.setattr(attention.k_norm, "offset", 0.0)  # a Llama-style norm: x / rms * w
    assert build() is None
    monkeypatch.setattr(attention.k_norm, "offset", 1.0)
    monkeypatch.setattr(attention, "attn_logit_softcapping", 50.0)
    assert build() is None
    monkeypatch.setattr(attention, "attn_logit_softcapping", None)
    monkeypatch.setattr(attention.config, "_attn_implementation", "eager")
    assert build() is None
    monkeypatch.setattr(attention.config, "_attn_implementation", "sdpa")
    monkeypatch.setattr(attention.config, "hidden_activation", "gelu")  # not the MLP it computes
    assert build() is None
    monkeypatch.setattr(attention.config, "hidden_activation", "gelu_pytorch_tanh")
    # Liger's patch binds its GeGLU forward to the MLP (the same math); any other forward of its own is not ours.

    class LigerGEGLUMLP:
        def forward(self, x):
            raise AssertionError("not called: DecodeLayer computes the MLP itself")

        forward.__module__ = "liger_kernel.transformers.geglu"

    monkeypatch.setitem(vars(layer.mlp), "forward", LigerGEGLUMLP.forward.__get__(layer.mlp))
    assert build() is not None
    monkeypatch.setitem(vars(layer.mlp), "forward", lambda x: x)
    assert build() is None
    monkeypatch.delitem(vars(layer.mlp), "forward")
    for hooked in (layer, attention, layer.post_feedforward_layernorm, attention.o_proj, layer.mlp, layer.mlp.up_proj):
        handle = hooked.register_forward_hook(lambda *args: None)
        try:
            assert build() is None
        finally:
            handle.remove()
    monkeypatch.setattr(layer, "forward", lambda *args, **kwargs: None, raising=False)  # a forward of its own
    assert build() is None
    monkeypatch.delattr(layer, "forward")
    weight = weight[:-1]  # not q, k and v of this layer
    assert build() is None


def test_a_failed_compile_falls_back_to_the_models_layer_for_the_process(tiny_float32, monkeypatch, caplog):
    import torch

    from components.generator import decode_layer

    model, text = tiny_float32
    layer, hidden, embeddings, bias, (theirs, ours) = _decode_inputs(model, text)
    calls = []

    def compiled(function):
        def failing(*args):
            calls.append(function.__name__)
            raise torch._dynamo.exc.BackendCompilerFailed(lambda: None, RuntimeError("no compiler"), None)

        return failing

    monkeypatch.setattr(decode_layer, "_COMPILE_FAILED", [])
    monkeypatch.setattr(decode_layer, "_compiled", compiled)
    first = decode_layer.DecodeLayer.build(layer, _fused_qkv(layer), ours.layers[0], compiled=True)
    later = decode_layer.DecodeLayer.build(layer, _fused_qkv(layer), ours.layers[0], compiled=True)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="components.generator.decode_layer"):
        expected = _run(layer, hidden, embeddings, bias, theirs)
        for decode in (first, later):
            with decode.swapped_in():
                got = _run(layer, hidden, embeddings, bias, ours)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert calls == ["norm_rope_and_store"]  # the later one did not try again
    assert "torch.compile of the decode step's layers failed" in caplog.text


def test_decode_layer_weights_are_counted_for_the_generators_memory(tiny_float32):
    """o_proj's reordered copy and gate/up stacked, per layer: what the batch size from free memory leaves room for."""
    from components.generator.decode_layer import weight_bytes

    model, text = tiny_float32
    language_model = model.model.language_model
    expected = sum(4 * (layer.self_attn.o_proj.weight.numel() + layer.mlp.gate_proj.weight.numel()
                        + layer.mlp.up_proj.weight.numel()) for layer in language_model.layers)
    assert weight_bytes(language_model) == expected


def test_compiled_decode_layer_takes_any_cache_length_without_recompiling(tiny_float32, monkeypatch):
    """Each rollout's cache has its own length. A recompile for it would come inside the next rollout's graph
    capture, where the generator then has to warm up and record again: the compiled functions must take any."""
    import shutil

    import torch

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler")

    from components.generator import decode_layer

    monkeypatch.setattr(decode_layer, "_COMPILE_FAILED", [])
    model, text = tiny_float32
    for slots, stance in ((9, "default"), (13, "fail_on_recompile")):
        layer, hidden, embeddings, bias, (theirs, ours) = _decode_inputs(model, text, slots=slots)
        decode = decode_layer.DecodeLayer.build(layer, _fused_qkv(layer), ours.layers[0], compiled=True)
        with torch.no_grad():
            expected = _run(layer, hidden, embeddings, bias, theirs)
            with torch.compiler.set_stance(stance), decode.swapped_in():
                got = _run(layer, hidden, embeddings, bias, None)
        assert decode_layer._COMPILE_FAILED == [], "compiled, and not again for the second cache length"
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.layers[0].keys, theirs.layers[0].keys, rtol=1e-4, atol=1e-5)
