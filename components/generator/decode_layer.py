"""Gemma 3's decoder layer for a decode step (one new token a row) in fewer kernels than the model's own.

A decode step at a rollout's row counts pays every small kernel in full, whatever the rows, and each GPU of a
data-parallel rollout pays them again. In the model's layer, after the q/k/v matmul, come a copy and an
RMSNorm for q, the same for k (the norm kernels take contiguous rows; q and k are slices of the fused
matmul's output), RoPE, two cache writes; after attention, an RMSNorm, an add and an RMSNorm; after the MLP an
RMSNorm and an add. Here four functions that torch.compile fuses (on CUDA) do that work:
``norm_rope_and_store``, ``add_norm_then_norm``, ``gelu_tanh_times`` and ``norm_then_add``; sdpa gets the query
heads already in its grouped-query layout, and o_proj takes sdpa's output as it lies (its weight's columns
reordered to match; the model's path copies it back into head order first); gate and up are one matmul. The
input norm and sdpa are the model's; the matmuls use the model's (merged) weights.

Used only inside the generator's captured decode step (``StaticBatchGenerator``); the prefill and training
run the model's own layers. The math is the model's: Gemma's RMSNorm ``x / rms(x) * (1 + w)`` in fp32, cast
back, and rotate-half RoPE; a compiled kernel may round once where eager rounds after each op.
"""

from __future__ import annotations

import contextlib
import functools
import logging

from components.generator.projections import has_hooks, plain_linear_weight, stacked, stacked_copy_bytes

log = logging.getLogger(__name__)


def norm_rope_and_store(qkv, q_norm_weight, k_norm_weight, eps: float, cos, sin, keys, values, slot,
                        q_heads: int, kv_heads: int):
    """``qkv`` (rows, (q_heads + 2 kv_heads) * head_dim), one token a row: normalise q and k, rotate them by
    ``cos``/``sin`` (rows, head_dim), write k and v into ``keys``/``values`` (rows, kv_heads, slots, head_dim)
    at ``slot`` (a 1-element index tensor), and return q as (rows, kv_heads, q_heads // kv_heads, head_dim)."""
    rows, head_dim = qkv.shape[0], keys.shape[-1]
    q, k, v = qkv.view(rows, q_heads + 2 * kv_heads, head_dim).split([q_heads, kv_heads, kv_heads], dim=1)
    q = _rotate(_gemma_rms_norm(q, q_norm_weight, eps), cos, sin)
    k = _rotate(_gemma_rms_norm(k, k_norm_weight, eps), cos, sin)
    keys.index_copy_(2, slot, k[:, :, None])
    values.index_copy_(2, slot, v[:, :, None])
    return q.reshape(rows, kv_heads, q_heads // kv_heads, head_dim)


def add_norm_then_norm(attended, residual, post_attention_weight, pre_feedforward_weight, eps: float):
    """The attention block's end and the MLP block's start: the residual stream after adding the normalised
    attention output, and that stream normalised for the MLP."""
    hidden = residual + _gemma_rms_norm(attended, post_attention_weight, eps)
    return hidden, _gemma_rms_norm(hidden, pre_feedforward_weight, eps)


def gelu_tanh_times(gate_up):
    """Gemma's MLP activation on ``gate_up`` (the gate and up projections side by side): gelu_tanh(gate) * up."""
    import torch

    gate, up = gate_up.float().chunk(2, dim=-1)
    return (torch.nn.functional.gelu(gate, approximate="tanh") * up).to(gate_up.dtype)


def norm_then_add(mlp_output, residual, post_feedforward_weight, eps: float):
    """The MLP block's end: the residual stream after adding the normalised MLP output."""
    return residual + _gemma_rms_norm(mlp_output, post_feedforward_weight, eps)


def _gemma_rms_norm(x, weight, eps: float):
    import torch

    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + weight.float())).to(x.dtype)


def _rotate(x, cos, sin):
    """Rotate-half RoPE (the model's ``apply_rotary_pos_emb``); ``cos``/``sin`` per row, the same for every head."""
    import torch

    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


@functools.cache
def _compiled(function):
    """``function`` compiled once a process, its kernels specialised on the sizes of its first call, except the
    cache length (``_decode`` marks it dynamic: it changes with every batch's prompts). A call with other rows
    compiles again, for any rows from then on; the generator warms up (compiling) before it captures a graph of
    new rows, and a compile inside a capture fails instead (see engine._record_graph). Sizes are static
    otherwise: kernels compiled with every size dynamic ran slower."""
    import torch

    return torch.compile(function, fullgraph=True)


# Set once torch.compile has failed in this process: every DecodeLayer then runs the model's own layer.
_COMPILE_FAILED: list[str] = []

# The layer's norms that DecodeLayer computes itself (the input norm stays the model's module).
_LAYER_NORMS = ("post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


def _norm_weight_and_eps(norm, size: int):
    """A Gemma RMSNorm's weight and epsilon, also after Liger's patch; None for any other norm."""
    weight = getattr(norm, "weight", None)
    if weight is None or tuple(weight.shape) != (size,) or getattr(norm, "offset", 1.0) != 1.0:
        return None
    if getattr(norm, "casting_mode", "gemma") != "gemma" or has_hooks(norm):
        return None
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None)
    return None if eps is None else (weight, float(eps))


def _mlp_weights(mlp, config):
    """(gate, up, down) weights of an MLP that computes Gemma 3's down(gelu_tanh(gate(x)) * up(x)) with plain
    matmuls, also after Liger's patch (which binds its GeGLU ``forward`` to the instance); None for any other."""
    own_forward = getattr(vars(mlp).get("forward"), "__func__", vars(mlp).get("forward"))
    liger = (getattr(own_forward, "__module__", "") or "").startswith("liger_kernel.") and getattr(
        own_forward, "__qualname__", "").endswith("LigerGEGLUMLP.forward")
    if (type(mlp).__name__ != "Gemma3MLP" or has_hooks(mlp) or (own_forward is not None and not liger)
            or (not liger and getattr(config, "hidden_activation", None) != "gelu_pytorch_tanh")):
        return None
    weights = [plain_linear_weight(getattr(mlp, name, None)) for name in ("gate_proj", "up_proj", "down_proj")]
    return None if any(w is None for w in weights) else weights


def grouped_query_columns(o_weight, kv_heads: int, group: int):
    """o_proj's weight with its input columns in sdpa's output order for grouped queries, (group, kv head, dim),
    instead of the heads' order (kv head, group, dim)."""
    hidden, width = o_weight.shape
    return o_weight.view(hidden, kv_heads, group, width // (kv_heads * group)).transpose(1, 2).reshape(hidden, width)


def weight_bytes(language_model) -> int:
    """What the DecodeLayers of a generator over ``language_model`` allocate at most: o_proj's reordered weights,
    and gate/up stacked where they are not already."""
    total = 0
    for layer in language_model.layers:
        o_proj, mlp = getattr(layer.self_attn, "o_proj", None), getattr(layer, "mlp", None)
        o_weight = plain_linear_weight(o_proj) if o_proj is not None else None
        mlp_weights = _mlp_weights(mlp, layer.self_attn.config) if mlp is not None else None
        if o_weight is not None and mlp_weights is not None:
            total += o_weight.numel() * o_weight.element_size() + stacked_copy_bytes(mlp_weights[:2])
    return total


class DecodeLayer:
    """Stands in for one Gemma 3 decoder layer's ``forward`` during the decode step (``swapped_in``).

    Built only for a layer whose q/k/v matmul the generator fuses (``fused_weight``: their stacked weights, taken
    when the generator was built) and that is Gemma 3's as the model defines it: sdpa, no logit soft-capping,
    Gemma RMSNorms of one epsilon, o_proj and the MLP plain matmuls (no live adapters: the rollout merges
    them), no hooks, no ``forward`` of its own. ``build`` returns None otherwise. It copies o_proj's weight
    (reordered) and gate/up's (stacked, unless they lie so already) when built: build one per generator."""

    def __init__(self, layer, fused_weight, cache_layer, norm_weights: dict, eps: float, compiled: bool, o_weight,
                 mlp_weights):
        config = layer.self_attn.config
        self.layer, self.fused_weight, self.cache_layer = layer, fused_weight, cache_layer
        self.norm_weights, self.eps, self.compiled = norm_weights, eps, compiled
        self.q_heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.o_weight = grouped_query_columns(o_weight.detach(), self.kv_heads, self.q_heads // self.kv_heads)
        gate, up, self.down_weight = (w.detach() for w in mlp_weights)
        self.gate_up_weight = stacked([gate, up])
        pick = _compiled if compiled else (lambda function: function)
        self.norm_rope_and_store = pick(norm_rope_and_store)
        self.add_norm_then_norm = pick(add_norm_then_norm)
        self.gelu_tanh_times = pick(gelu_tanh_times)
        self.norm_then_add = pick(norm_then_add)

    @classmethod
    def build(cls, layer, fused_weight, cache_layer, *, compiled: bool) -> "DecodeLayer | None":
        attention = getattr(layer, "self_attn", None)
        config = getattr(attention, "config", None)
        if (type(layer).__name__ != "Gemma3DecoderLayer" or type(attention).__name__ != "Gemma3Attention"
                or getattr(config, "_attn_implementation", None) != "sdpa"
                or getattr(attention, "attn_logit_softcapping", None) is not None
                or has_hooks(layer) or has_hooks(attention) or "forward" in vars(layer)):
            return None
        o_weight, mlp_weights = plain_linear_weight(attention.o_proj), _mlp_weights(layer.mlp, config)
        if o_weight is None or mlp_weights is None:
            return None
        head_dim = attention.head_dim
        norms = {name: _norm_weight_and_eps(getattr(attention, name), head_dim) for name in ("q_norm", "k_norm")}
        norms.update({name: _norm_weight_and_eps(getattr(layer, name), config.hidden_size) for name in _LAYER_NORMS})
        expected_rows = (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
        if any(norm is None for norm in norms.values()) or fused_weight.shape[0] != expected_rows:
            return None
        epsilons = {eps for _, eps in norms.values()}
        if len(epsilons) != 1:
            return None
        weights = {name: weight for name, (weight, _) in norms.items()}
        return cls(layer, fused_weight, cache_layer, weights, epsilons.pop(), compiled, o_weight, mlp_weights)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        import torch

        if _COMPILE_FAILED and self.compiled:
            return type(self.layer).forward(self.layer, hidden_states, position_embeddings, attention_mask, **kwargs)
        try:
            return self._decode(hidden_states, position_embeddings, attention_mask)
        except (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit) as error:
            # A failure to compile (not one under a graph capture: the generator handles those) costs speed
            # only. The model's layer then writes the same keys and values at the same slot again.
            if hidden_states.is_cuda and torch.cuda.is_current_stream_capturing():
                raise
            _COMPILE_FAILED.append(str(error).splitlines()[0][:200])
            log.warning("torch.compile of the decode step's layers failed (%s): running the model's own layers "
                        "instead", _COMPILE_FAILED[0])
            return self.forward(hidden_states, position_embeddings, attention_mask, **kwargs)

    def _decode(self, hidden_states, position_embeddings, attention_mask):
        import torch

        linear = torch.nn.functional.linear
        layer, attention, cache, w = self.layer, self.layer.self_attn, self.cache_layer, self.norm_weights
        rows = hidden_states.shape[0]
        normed = layer.input_layernorm(hidden_states)
        qkv = linear(normed[:, 0], self.fused_weight)
        cos, sin = position_embeddings
        for tensor in (cache.keys, cache.values):
            torch._dynamo.maybe_mark_dynamic(tensor, 2)  # the cache length: new with each batch's prompts
        query = self.norm_rope_and_store(qkv, w["q_norm"], w["k_norm"], self.eps, cos[:, 0], sin[:, 0],
                                         cache.keys, cache.values, cache.slots, self.q_heads, self.kv_heads)
        out = torch.nn.functional.scaled_dot_product_attention(
            query, cache.keys, cache.values, attn_mask=attention_mask, scale=attention.scaling)
        # (rows, kv heads, group, dim) over memory laid out (rows, group, kv heads, dim) by the mem-efficient
        # kernel: the transposed view is contiguous (any other kernel's layout gets copied, correctly).
        attended = linear(out.transpose(1, 2).reshape(rows, 1, -1), self.o_weight)
        hidden, normed = self.add_norm_then_norm(attended, hidden_states, w["post_attention_layernorm"],
                                                 w["pre_feedforward_layernorm"], self.eps)
        mlp_output = linear(self.gelu_tanh_times(linear(normed, self.gate_up_weight)), self.down_weight)
        return self.norm_then_add(mlp_output, hidden, w["post_feedforward_layernorm"], self.eps)

    @contextlib.contextmanager
    def swapped_in(self):
        """A context in which the layer's calls run ``forward`` (an instance attribute shadows the class's
        method; removed on exit)."""
        self.layer.forward = self.forward
        try:
            yield
        finally:
            del self.layer.forward
