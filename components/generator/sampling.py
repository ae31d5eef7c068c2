"""Sampling as transformers' ``generate`` does it: temperature, then top-k, then top-p.

A token is drawn by the exponential race (argmax of p / Exp(1)), which is exact and needs no host
synchronisation, so the sampler runs inside the captured decode step. The values come from the caller (the
recipe owns the evaluation's protocol, TRL's config the rollout's); the defaults here change nothing:
temperature 1, no top-k, no top-p.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    max_new_tokens: int
    do_sample: bool = True  # False: greedy
    temperature: float = 1.0
    top_p: float = 1.0  # 1.0: no top-p
    top_k: int = 0  # 0: no top-k
    # Never sampled (TRL suppresses Gemma's image token in completions).
    suppress_token_ids: tuple[int, ...] = ()


class Sampler:
    """Picks each row's next token from its logits; graph-capturable (no host sync)."""

    def __init__(self, settings: SamplingSettings, vocab_size: int, device=None):
        import torch

        self.settings = settings
        self.top_k = settings.top_k if 0 < settings.top_k < vocab_size else 0
        # Built here, not in __call__: a host-to-device copy cannot run inside graph capture.
        suppressed = [t for t in settings.suppress_token_ids if 0 <= t < vocab_size]  # as generate: unknown ids ignored
        self.suppressed = torch.tensor(suppressed, dtype=torch.long, device=device) if suppressed else None

    def __call__(self, logits):
        import torch

        s = self.settings
        if self.suppressed is not None:
            logits = logits.index_fill(-1, self.suppressed, float("-inf"))
        if not s.do_sample:
            return logits.argmax(dim=-1)
        logits = logits / s.temperature
        if not self.top_k and s.top_p >= 1.0:
            # Plain sampling (GRPO's default): no sort over the whole vocabulary.
            probs = torch.softmax(logits, dim=-1)
            return (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1)
        if self.top_k:
            values, indices = torch.topk(logits, self.top_k, dim=-1)
        else:
            values, indices = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(values, dim=-1)
        if s.top_p < 1.0:
            # Keep the most likely tokens until their mass reaches top_p (the first is always kept).
            mass_before = torch.cumsum(probs, dim=-1) - probs
            probs = probs.masked_fill(mass_before > s.top_p, 0.0)
        race = torch.empty_like(probs).exponential_()
        choice = (probs / race).argmax(dim=-1, keepdim=True)
        return indices.gather(-1, choice).squeeze(-1)

