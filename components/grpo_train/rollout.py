"""GRPO completions through our generator (``components.generator``) instead of TRL's ``model.generate``.

TRL without vLLM samples a step's completions with ``generate``, which on a 4B Gemma 3 is bound by host-side
kernel launches. Here the same sampling (temperature, top-p, top-k, the image token suppressed) runs through
the generator's one entry point: one pass for every completion of the step, over LoRA-merged copies of the
language model's weights (live adapters would add many small fp32 matmuls to every decode step). The copies
exist during the rollout only; the trained weights are never touched (no bf16 merge/unmerge drift).

Plugged into ``GRPOTrainer(rollout_func=...)``; TRL still scores, computes reference log-probs and the loss.
"""

from __future__ import annotations

import contextlib
import logging
import time

from components.generator import STACKED_PROJECTIONS, SamplingSettings, generate_completions  # torch loads inside functions

log = logging.getLogger(__name__)


def unsupported_reason(config) -> str | None:
    """Why our generator cannot reproduce TRL's sampling for this GRPOConfig (None: it can)."""
    if config.min_p is not None:
        return "min_p is set"
    if config.repetition_penalty != 1.0:
        return "repetition_penalty is not 1.0"
    if config.generation_kwargs:
        return "generation_kwargs are set"
    if config.use_transformers_paged:
        return "use_transformers_paged is set"
    return None


@contextlib.contextmanager
def merged_lora_weights(peft_model):
    """Inside: adapters off and each LoRA linear of the language model computing with W + scaling * B @ A.

    The merged weights are new tensors (fp32 sum, one rounding to the weight dtype), siblings of
    ``STACKED_PROJECTIONS`` stacked in one; the originals are put back on exit. Yields False (and changes nothing)
    where an adapter is not a plain LoRA linear (DoRA, ...).
    """
    import torch
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    language_model = peft_model.get_base_model().model.language_model
    layers = [m for m in language_model.modules() if isinstance(m, LoraLayer)]
    plain = all(isinstance(m, LoraLinear) and not m.fan_in_fan_out and not any(m.use_dora.values()) for m in layers)
    if not plain:
        yield False
        return
    saved = []
    try:
        with torch.no_grad():
            for group in _merge_groups(language_model, layers):
                bases = [layer.get_base_layer() for layer in group]
                first, rows = bases[0].weight, [b.weight.shape[0] for b in bases]
                stack = torch.empty(sum(rows), *first.shape[1:], dtype=first.dtype, device=first.device)
                for layer, base, target in zip(group, bases, stack.split(rows)):
                    saved.append((base.weight, base.weight.data))
                    base.weight.data = target.copy_(_merged_weight(layer, base))
        with peft_model.disable_adapter():
            yield True
    finally:
        for param, data in saved:
            param.data = data


def _merged_weight(layer, base):
    """W + scaling * B @ A over the active adapters, in fp32."""
    merged = base.weight.float()
    for name in layer.active_adapters:
        if name in layer.lora_A:
            merged = merged.addmm(layer.lora_B[name].weight.float(), layer.lora_A[name].weight.float(),
                                  alpha=layer.scaling[name])
    return merged


def _merge_groups(language_model, lora_layers: list) -> list[list]:
    """The LoRA layers to merge, in groups: each decoder layer's ``STACKED_PROJECTIONS`` where all of a group are
    LoRA layers of one input size, dtype and device; every other layer alone."""
    ids = {id(layer) for layer in lora_layers}
    groups, grouped = [], set()
    for decoder_layer in getattr(language_model, "layers", ()):
        for parent_name, names in STACKED_PROJECTIONS:
            parent = getattr(decoder_layer, parent_name, None)
            members = [getattr(parent, name, None) for name in names]
            if any(id(m) not in ids for m in members):
                continue
            weights = [m.get_base_layer().weight for m in members]
            if len({(w.shape[1:], w.dtype, w.device) for w in weights}) == 1:
                groups.append(members)
                grouped.update(id(m) for m in members)
    return groups + [[layer] for layer in lora_layers if id(layer) not in grouped]


def lora_layers(model) -> list:
    """PEFT's adapter layers in ``model`` (each carries its own ``cast_input_dtype_enabled``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def lora_input_casts(peft_model):
    """Inside: every LoRA layer casts its input to the adapter's dtype again (PEFT's default).

    The training step switches those casts off, since TRL runs every training forward under bf16 autocast
    (``core._skip_lora_input_casts``); generating with the adapters unmerged runs without autocast and needs them.
    """
    layers = lora_layers(peft_model)
    saved = [m.cast_input_dtype_enabled for m in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = True
    try:
        yield
    finally:
        for layer, value in zip(layers, saved):
            layer.cast_input_dtype_enabled = value


@contextlib.contextmanager
def weights_for_generation(model):
    """The policy as the rollout samples from it: merged LoRA copies where the adapters allow, else the live
    adapters with PEFT's input casts (the rollout runs without autocast). A plain model is used as it is."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        yield
        return
    with merged_lora_weights(model) as merged:
        if merged:
            yield
        else:
            with lora_input_casts(model):
                yield


class StaticGraphRollout:
    """``rollout_func(prompts, trainer)``: one completion per prompt entry (TRL already repeats each prompt
    ``num_generations`` times), all in one generation pass when memory allows."""

    def __init__(self, config, *, batch_size: int = 0):
        self.config = config
        self.batch_size = batch_size  # 0: from free memory (a smaller card splits the step into a few passes)
        self.seconds: list[float] = []  # wall time of each call, for the training summary
        self.phase_seconds: list[dict[str, float]] = []  # each call's merge / capture / prefill / decode seconds

    def _settings(self, trainer):
        from transformers import ProcessorMixin

        c = self.config
        suppressed = ()
        if isinstance(trainer.processing_class, ProcessorMixin):  # as TRL does: an image token would lack features
            image_token = getattr(trainer.model.config, "image_token_id", None)
            suppressed = (image_token,) if image_token is not None else ()
        return SamplingSettings(do_sample=True, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k or 0,
                                max_new_tokens=c.max_completion_length, suppress_token_ids=suppressed)

    def __call__(self, prompts: list, trainer) -> dict:
        import torch
        from peft import PeftModel

        # TRL's own tokenization (chat template, VLM content blocks), so prompt ids match its generate path.
        prompt_ids, images, _ = trainer._tokenize_prompts(prompts)
        if images is not None:
            raise ValueError("the static-graph rollout handles text prompts only")
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        model = unwrapped.get_base_model() if isinstance(unwrapped, PeftModel) else unwrapped
        pad_id = trainer.processing_class.tokenizer.pad_token_id if hasattr(trainer.processing_class, "tokenizer") else trainer.processing_class.pad_token_id
        was_training = model.training
        model.eval()  # no dropout, and gradient checkpointing (which would drop the KV cache) stays off
        started = time.perf_counter()
        phases: dict[str, float] = {}
        try:
            with weights_for_generation(unwrapped):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()  # the merge is queued GPU work: time it here, not in the capture
                phases["merge"] = time.perf_counter() - started
                results = generate_completions(
                    model, prompt_ids, settings=self._settings(trainer), pad_token_id=pad_id,
                    eos_token_ids=trainer.eos_token_ids, batch_size=self.batch_size, seed=None, phase_seconds=phases,
                    decode_layers=True,  # compiled once, then every rollout of the run is faster
                )
        finally:
            model.train(was_training)
        self.seconds.append(time.perf_counter() - started)
        self.phase_seconds.append({phase: round(seconds, 3) for phase, seconds in phases.items()})
        tokens = sum(len(r.token_ids) for r in results)
        log.info("rollout: %d completions, %d tokens in %.1f s", len(results), tokens, self.seconds[-1])
        return {"prompt_ids": [list(p) for p in prompt_ids], "completion_ids": [r.token_ids for r in results], "logprobs": None}
