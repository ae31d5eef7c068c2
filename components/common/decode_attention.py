"""Gemma 3's attention for a decode step (one new token a row) in fewer kernels than the model's own.

After the q/k/v matmul, the model's attention runs, a layer: a copy and an RMSNorm for q, the same for k (the
norm kernels take contiguous rows; q and k are slices of the fused matmul's output), RoPE, two cache writes
and sdpa's own layout copy: ~9 small kernels, ~0.6 ms of a 9 ms step at 128 rows on an H200 (34 layers), paid
in full at any row count. Here ``norm_rope_and_store`` does the norms, RoPE and cache writes as one function
that torch.compile fuses (on CUDA), and sdpa gets the query heads already in its grouped-query layout.

Used only inside the generator's captured decode step (``StaticBatchGenerator``); the prefill and training
run the model's own attention. The math is the model's: Gemma's RMSNorm ``x / rms(x) * (1 + w)`` in fp32,
cast back, then rotate-half RoPE; the compiled kernel rounds once where eager rounds after each op.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)


def norm_rope_and_store(qkv, q_norm_weight, k_norm_weight, eps: float, cos, sin, keys, values, slot,
                        q_heads: int, kv_heads: int):
    """``qkv`` (rows, (q_heads + 2 kv_heads) * head_dim), one token a row: normalise q and k, rotate them by
    ``cos``/``sin`` (rows, head_dim), write k and v into ``keys``/``values`` (rows, kv_heads, slots, head_dim)
    at ``slot`` (a 1-element index tensor), and return q as (rows, kv_heads, q_heads // kv_heads, head_dim)."""
    import torch

    rows, head_dim = qkv.shape[0], keys.shape[-1]
    q, k, v = qkv.view(rows, q_heads + 2 * kv_heads, head_dim).split([q_heads, kv_heads, kv_heads], dim=1)
    q = _rotate(_gemma_rms_norm(q, q_norm_weight, eps), cos, sin)
    k = _rotate(_gemma_rms_norm(k, k_norm_weight, eps), cos, sin)
    keys.index_copy_(2, slot, k[:, :, None])
    values.index_copy_(2, slot, v[:, :, None])
    return q.reshape(rows, kv_heads, q_heads // kv_heads, head_dim)


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
def _compiled():
    """``norm_rope_and_store`` compiled once a process, for any rows and cache length (dynamic shapes), so the
    generator's first warm-up step compiles it and no later capture does."""
    import torch

    return torch.compile(norm_rope_and_store, dynamic=True, fullgraph=True)


# Set once torch.compile has failed in this process: every DecodeAttention then runs the model's own attention.
_COMPILE_FAILED: list[str] = []


def _norm_weight_and_eps(norm, head_dim: int):
    """A Gemma RMSNorm's weight and epsilon, also after Liger's patch; None for any other norm."""
    weight = getattr(norm, "weight", None)
    if weight is None or tuple(weight.shape) != (head_dim,) or getattr(norm, "offset", 1.0) != 1.0:
        return None
    if getattr(norm, "casting_mode", "gemma") != "gemma" or norm._forward_hooks or norm._forward_pre_hooks:
        return None
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None)
    return None if eps is None else (weight, float(eps))


class DecodeAttention:
    """Stands in for one Gemma 3 attention layer's ``forward`` during the decode step (``swapped_in``).

    Built only for a layer whose q/k/v matmul the generator fuses (``fused_weight``: the concatenation, made
    when the generator was built) and whose attention is Gemma 3's as the model defines it: sdpa, no logit
    soft-capping, Gemma RMSNorms on q and k, no hooks. ``build`` returns None otherwise."""

    def __init__(self, attention, fused_weight, cache_layer, q_norm, k_norm, compiled: bool):
        self.attention, self.fused_weight, self.cache_layer = attention, fused_weight, cache_layer
        (self.q_norm_weight, self.eps), (self.k_norm_weight, _) = q_norm, k_norm
        config = attention.config
        self.q_heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.function = _compiled() if compiled else norm_rope_and_store

    @classmethod
    def build(cls, attention, fused_weight, cache_layer, *, compiled: bool) -> "DecodeAttention | None":
        config = getattr(attention, "config", None)
        if (type(attention).__name__ != "Gemma3Attention" or config is None
                or getattr(config, "_attn_implementation", None) != "sdpa"
                or getattr(attention, "attn_logit_softcapping", None) is not None
                or attention._forward_hooks or attention._forward_pre_hooks):
            return None
        head_dim = attention.head_dim
        q_norm = _norm_weight_and_eps(attention.q_norm, head_dim)
        k_norm = _norm_weight_and_eps(attention.k_norm, head_dim)
        expected_rows = (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
        if q_norm is None or k_norm is None or q_norm[1] != k_norm[1] or fused_weight.shape[0] != expected_rows:
            return None
        return cls(attention, fused_weight, cache_layer, q_norm, k_norm, compiled)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        import torch

        if _COMPILE_FAILED and self.function is not norm_rope_and_store:
            return type(self.attention).forward(self.attention, hidden_states, position_embeddings, attention_mask,
                                                **kwargs)
        rows = hidden_states.shape[0]
        layer = self.cache_layer
        qkv = torch.nn.functional.linear(hidden_states[:, 0], self.fused_weight)
        cos, sin = position_embeddings
        try:
            query = self.function(qkv, self.q_norm_weight, self.k_norm_weight, self.eps, cos[:, 0], sin[:, 0],
                                  layer.keys, layer.values, layer.slots, self.q_heads, self.kv_heads)
        except torch._dynamo.exc.TorchDynamoException as error:
            # A failure to compile (not one under a graph capture: the generator handles those) costs speed only.
            if qkv.is_cuda and torch.cuda.is_current_stream_capturing():
                raise
            _COMPILE_FAILED.append(str(error).splitlines()[0][:200])
            log.warning("torch.compile of the decode step's attention failed (%s): running the model's own "
                        "attention instead", _COMPILE_FAILED[0])
            return self.forward(hidden_states, position_embeddings, attention_mask, **kwargs)
        out = torch.nn.functional.scaled_dot_product_attention(
            query, layer.keys, layer.values, attn_mask=attention_mask, scale=self.attention.scaling)
        return self.attention.o_proj(out.reshape(rows, 1, -1)), None

    def swapped_in(self):
        """A context in which the attention layer's calls run ``forward`` (an instance attribute shadows the
        class's method; removed on exit)."""
        import contextlib

        @contextlib.contextmanager
        def swap():
            self.attention.forward = self.forward
            try:
                yield
            finally:
                del self.attention.forward

        return swap()
