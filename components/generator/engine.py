"""The generator's engine: batched generation over a static KV cache, each decode step one CUDA graph replay.

Why not ``model.generate``: each decode step of a 4B Gemma 3 launches many small kernels, so the host (not
the GPU) sets the pace, whatever the batch; ``generate`` adds its own per-step Python. Here the whole decode
step (every layer, sampling, EOS bookkeeping, mask update) is captured once in a CUDA graph over a static
cache and replayed, so a step costs what the GPU needs.

The loop is plain PyTorch over the model's own modules (``language_model`` + ``lm_head``), with masks built
here and passed as Gemma 3's per-layer-type dict of additive biases (so the model builds none, and sdpa
converts none in each layer), a cache of full-length static layers written at slots set here (sliding layers
get a sliding-window mask instead of a rolling buffer), and each layer's q, k and v projections read as one
matmul (``FUSED_PROJECTIONS``). The prefill attends only to the part of the cache filled so far; the captured
decode step uses sdpa's mem-efficient kernel (``DECODE_ATTENTION_BACKENDS``) and, in the training rollout, runs
each decoder layer through ``decode_layer.DecodeLayer`` (the layer's small ops fused by torch.compile, gate/up as
one matmul). On CPU the same step runs eagerly: the unit tests check it token for token against
``model.generate`` (greedy). Sampling is ``sampling.Sampler``'s, inside the graph.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from components.generator import decode_layer
from components.generator.memory import PREFILL_TOKENS, auto_batch_size, free_device_bytes, head_dim, sampling_bytes_per_row
from components.generator.projections import FUSED_PROJECTIONS, FusedProjections, fusable_projections, fused_weight_bytes
from components.generator.sampling import Sampler, SamplingSettings

log = logging.getLogger(__name__)

# How often the host checks whether every row has finished (a sync; cheap at this interval).
FINISH_CHECK_EVERY = 16
# sdpa kernels for the captured decode step, the first that takes it used alone: for one query a row against the
# whole cache under a mask, mem-efficient beats cuDNN's default (bench/bench_decode_step.py --backends).
DECODE_ATTENTION_BACKENDS = ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "FLASH_ATTENTION", "MATH")
# How sdpa says that no enabled backend takes the call (CUDA, CPU).
NO_ATTENTION_KERNEL = ("No available kernel", "No viable backend")


@dataclass
class GeneratedSequence:
    token_ids: list[int]  # up to and including the first EOS
    truncated: bool  # no EOS within max_new_tokens


def attention_kernel(name: str | None):
    """Context: sdpa runs only this backend (an ``SDPBackend`` name); None: as the caller has set it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, name)) if name else contextlib.nullcontext()


def _even_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """Split into the fewest batches of at most ``batch_size`` rows, all of (nearly) equal size."""
    count = math.ceil(len(order) / batch_size)
    size = math.ceil(len(order) / count)
    return [order[i : i + size] for i in range(0, len(order), size)]


@functools.cache
def _slot_static_layer_class():
    """A transformers ``StaticLayer`` written at the slots the generator sets, and read up to ``visible_length``.

    ``StaticLayer.update`` derives its slots from its own counter: an arange and two adds a layer, in every
    decode step. Here the generator points every layer at one index tensor: the prefill chunk's slots, or the
    decode step's write index. The counter is left at 0 (``get_seq_length``): the generator always passes
    positions and masks, so the model never reads it. The prefill sets ``visible_length`` to the filled width,
    so attention skips the empty rest of the cache; the captured decode step reads the whole cache (``None``),
    its mask hiding what is not written yet.
    """

    from transformers.cache_utils import StaticLayer

    class SlotStaticLayer(StaticLayer):
        slots = None  # LongTensor: the cache slots that the next update writes
        visible_length: int | None = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            self.keys.index_copy_(2, self.slots, key_states)
            self.values.index_copy_(2, self.slots, value_states)
            if self.visible_length is None:
                return self.keys, self.values
            return self.keys[:, :, : self.visible_length], self.values[:, :, : self.visible_length]

    return SlotStaticLayer


# Per process: for each device, the side stream that decode graphs are recorded on (one, so that cuBLAS sets up
# its workspace for it once) and the graph recorded last, whose memory pool the next one records into (see
# _capture); per model, the decode steps already warmed up, with the sdpa backend each took.
_RECORDING_STREAMS: dict = {}
_LAST_GRAPHS: dict = {}
_WARMED_UP_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class StaticBatchGenerator:
    """Generates for batches of ``rows`` prompts of at most ``max_prompt_len`` tokens, reusing one cache and graph.

    It takes the fused projections' weights when built (a copy, unless they lie stacked already): after the
    model's weights change (a training step), build a new one, as each rollout does."""

    def __init__(
        self,
        model,
        *,
        rows: int,
        max_prompt_len: int,
        settings: SamplingSettings,
        pad_token_id: int,
        eos_token_ids: Sequence[int],
        use_cuda_graph: bool | None = None,
        attention_backends: Sequence[str] | None = DECODE_ATTENTION_BACKENDS,
        fused_projections=FUSED_PROJECTIONS,
        decode_layers: bool = False,
    ):
        import torch
        from transformers.cache_utils import Cache

        self.model = model
        self.language_model = model.model.language_model
        self.lm_head = model.get_output_embeddings()
        self.text_config = model.config.get_text_config()
        self.device = next(model.parameters()).device
        self.rows = rows
        self.settings = settings
        self.cache_len = max_prompt_len + settings.max_new_tokens
        self.pad_token_id = pad_token_id
        self.use_cuda_graph = self.device.type == "cuda" if use_cuda_graph is None else use_cuda_graph
        self.attention_backends = attention_backends  # for the captured step; None: whatever the caller has set
        self.sampler = Sampler(settings, self.text_config.vocab_size, self.device)
        self.fused_groups = [FusedProjections(*group) for group in fusable_projections(self.language_model, fused_projections)]
        window = getattr(self.text_config, "sliding_window", None)
        self.sliding_window = window if window and window < self.cache_len else None
        # One full-length static layer per decoder layer; sliding layers are handled by their mask.
        layer_class = _slot_static_layer_class()
        self.cache = Cache(layers=[layer_class(max_cache_len=self.cache_len) for _ in range(self.text_config.num_hidden_layers)])
        self.decode_layers = self._decode_layers() if decode_layers else []
        params = inspect.signature(self.language_model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

        dev, L = self.device, self.cache_len
        self.eos = torch.tensor(list(eos_token_ids), device=dev)
        self.key_index = torch.arange(L, device=dev)
        # Decode-step state, updated in place (inside the graph) so that replays see it.
        self.next_token = torch.zeros(rows, dtype=torch.long, device=dev)
        self.position = torch.zeros(rows, dtype=torch.long, device=dev)
        self.write_index = torch.zeros(1, dtype=torch.long, device=dev)  # cache slot of the token being fed
        self.step_index = torch.zeros(1, dtype=torch.long, device=dev)  # output column of the token being sampled
        self._point_cache(self.write_index, None)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.full_mask = torch.zeros(rows, 1, 1, L, dtype=torch.bool, device=dev)
        self.sliding_mask = torch.zeros_like(self.full_mask)
        # What the layers get: the masks as sdpa's additive bias, made once a step (see _attention_bias).
        self.dtype = self.language_model.layers[0].self_attn.k_proj.weight.dtype  # what keys and values come out as
        self.bias_values = (torch.zeros((), dtype=self.dtype, device=dev),
                            torch.full((), torch.finfo(self.dtype).min, dtype=self.dtype, device=dev))
        self.full_bias = self._aligned_bias(self.full_mask.shape)
        self.sliding_bias = self._aligned_bias(self.full_mask.shape) if self.sliding_window is not None else None
        self.output = torch.full((rows, settings.max_new_tokens), pad_token_id, dtype=torch.long, device=dev)
        self.graph = None
        self.attention_backend: str | None = None  # the sdpa backend the graph was recorded under
        # Wall time per phase over all batches; "capture" includes allocating the cache and any warm-up step.
        self.seconds = {"capture": 0.0, "prefill": 0.0, "decode": 0.0}

    # -- one batch ---------------------------------------------------------------------------------------
    def _decode_layers(self) -> list:
        """A ``DecodeLayer`` for each decoder layer it can take: one whose q/k/v this generator fuses (compiled
        on a GPU)."""
        fused_qkv = {id(g.parent): g.weight for g in self.fused_groups if g.names == ("q_proj", "k_proj", "v_proj")}
        compiled = self.device.type == "cuda"
        built = [decode_layer.DecodeLayer.build(layer, fused_qkv[id(layer.self_attn)], cache_layer, compiled=compiled)
                 for layer, cache_layer in zip(self.language_model.layers, self.cache.layers)
                 if id(getattr(layer, "self_attn", None)) in fused_qkv]
        return [layer for layer in built if layer is not None]

    def _forward(self, input_ids, position_ids, masks, decode: bool = False):
        with contextlib.ExitStack() as fused:
            for group in self.fused_groups:
                fused.enter_context(group.swapped_in())
            for layer in self.decode_layers if decode else ():
                fused.enter_context(layer.swapped_in())
            outputs = self.language_model(
                input_ids=input_ids,
                attention_mask=masks,
                position_ids=position_ids,
                use_cache=True,
                **{self.cache_kwarg: self.cache},
            )
        return self.lm_head(outputs.last_hidden_state[:, -1, :]).float()

    def _record(self, token):
        import torch

        token = torch.where(self.finished, torch.full_like(token, self.pad_token_id), token)
        self.output.index_copy_(1, self.step_index, token[:, None])
        self.finished |= (token[:, None] == self.eos).any(-1)
        self.next_token.copy_(token)
        self.step_index += 1

    def _prefill(self, prompts: list[list[int]]):
        """Left-pad to the batch's longest prompt, run it through the cache in chunks, sample the first token."""
        import torch

        dev = self.device
        width = max(len(p) for p in prompts)
        ids = torch.full((self.rows, width), self.pad_token_id, dtype=torch.long)
        real = torch.zeros((self.rows, width), dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            real[row, width - len(prompt) :] = True
        ids, real = ids.to(dev), real.to(dev)
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)

        self.cache.reset()
        self.finished.zero_()
        self.step_index.zero_()
        self.output.fill_(self.pad_token_id)
        self.full_mask.zero_()
        self.full_mask[:, 0, 0, :width] = real
        chunk = max(1, PREFILL_TOKENS // self.rows)
        logits = None
        try:
            for start in range(0, width, chunk):
                stop = min(width, start + chunk)
                query_index = torch.arange(start, stop, device=dev)
                # Attention reads only the slots filled so far (the cache is mostly empty during prefill).
                self._point_cache(query_index, stop)
                causal = self.key_index[None, :stop] <= query_index[:, None]  # [q, stop]
                full = self.full_mask[..., :stop] & causal[None, None]
                sliding = self._sliding(full, query_index[:, None], stop)
                full_bias = self._attention_bias(full)
                sliding_bias = full_bias if sliding is full else self._attention_bias(sliding)
                masks = {"full_attention": full_bias, "sliding_attention": sliding_bias}
                logits = self._forward(ids[:, start:stop], positions[:, start:stop], masks)
        finally:
            self._point_cache(self.write_index, None)
        self._record(self.sampler(logits))
        self.position.copy_(real.sum(-1))
        self.write_index.fill_(width)

    def _aligned_bias(self, shape):
        """An empty bias whose rows start 16-aligned, so that sdpa's mem-efficient kernel takes it without a copy."""
        import torch

        *outer, length = shape
        return torch.empty(*outer, -(-length // 16) * 16, dtype=self.dtype, device=self.device)[..., :length]

    def _attention_bias(self, mask, out=None):
        """``mask`` (True: attend) as the additive bias sdpa adds to the scores: 0, or the dtype's lowest value.

        Made once for all layers: given a boolean mask, sdpa would convert it in every layer, and its
        mem-efficient kernel copy it to aligned rows. The lowest finite value, as transformers' own masks use, not
        -inf: a left-pad query that sees no key gets no NaN."""
        import torch

        return torch.where(mask, *self.bias_values, out=self._aligned_bias(mask.shape) if out is None else out)

    def _point_cache(self, slots, visible_length: int | None):
        """Where every cache layer writes next, and how much of it attention reads (None: all)."""
        for layer in self.cache.layers:
            layer.slots, layer.visible_length = slots, visible_length

    def _sliding(self, full, query_index, length: int):
        if self.sliding_window is None:
            return full
        return full & (self.key_index[:length] > query_index - self.sliding_window)

    def _decode_step(self):
        """Feed ``next_token`` at slot ``write_index``, sample the following token. Graph-capturable: no host sync."""
        import torch

        self.full_mask.index_fill_(-1, self.write_index, True)
        full = sliding = self._attention_bias(self.full_mask, self.full_bias)
        if self.sliding_window is not None:
            torch.logical_and(self.full_mask, self.key_index > self.write_index - self.sliding_window, out=self.sliding_mask)
            sliding = self._attention_bias(self.sliding_mask, self.sliding_bias)
        masks = {"full_attention": full, "sliding_attention": sliding}
        logits = self._forward(self.next_token[:, None], self.position[:, None], masks, decode=True)
        self._record(self.sampler(logits))
        self.position += 1
        self.write_index += 1

    def _capture(self):
        """Record the decode step. It runs on whatever state is there (values don't matter, shapes and addresses
        do); the prefill that follows resets it, so no prompt is prefilled twice.

        The first generator of its kind in a process warms the step up first (one eager step); later ones, as
        each training step's rollout, record on the same side stream straight away, and warm up only if that
        recording fails."""
        import torch

        self._allocate_cache()
        stream = _RECORDING_STREAMS.get(self.device)
        if stream is None:
            stream = _RECORDING_STREAMS[self.device] = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # What set-up on first use can depend on, besides the model: Triton's kernels specialise on shapes (rows),
        # the sampling, the fused matmuls and the decode layers' compiled functions are kernels of their own. Not
        # the cache length, which changes with each batch's prompts: only tensor sizes depend on it, sdpa's
        # kernels are not compiled per shape and the decode layers' are compiled for any (see _record_graph).
        warm_up_key = (self.device, self.rows, self.settings, tuple(g.names for g in self.fused_groups),
                       len(self.decode_layers), tuple(self.attention_backends or ()))
        warmed_up_backends = _WARMED_UP_BACKENDS.setdefault(self.language_model, {})
        warmed_up = warm_up_key in warmed_up_backends
        if warmed_up:
            backend = warmed_up_backends[warm_up_key]
        else:
            with torch.cuda.stream(stream):
                backend = self._warm_up()
        # torch.cuda.graph() would release the whole cache first ("free as much memory as we can"): with the
        # training step's blocks cached, that cost more than the capture itself, every rollout. The graph's pool
        # needs about one step's transient memory: the cache is released only when the device lacks that.
        # All of a device's graphs record into one pool: with a pool each, a finished generator's pool stayed
        # reserved until the allocator released its whole cache (it frees unused graph pools only then), so the
        # pools piled up over the rollouts until a release. Sharing is safe as graphs here replay one at a time
        # and keep their state in tensors allocated outside the capture. The last graph is kept alive for it:
        # torch refuses to record into a pool whose graphs are all gone (a MemPool or graph_pool_handle too).
        last = _LAST_GRAPHS.get(self.device)
        pool = last.pool() if last is not None else None
        step_bytes = self.rows * sampling_bytes_per_row(self.text_config)
        if free_device_bytes(self.device, count_cached=False) < 2 * step_bytes:
            log.info("releasing the allocator's cached memory before the capture (the device is short of it)")
            torch.cuda.empty_cache()
        try:
            graph = self._record_graph(stream, pool, backend)
        except RuntimeError as error:
            if not warmed_up:
                raise
            # (torch ends a failed capture before it hands back the capture's memory pool: that memory may stay
            # reserved; rare, and less than one step's transient memory)
            log.warning("recording the decode step without a warm-up failed (%s): warming up, recording again",
                        str(error).splitlines()[0][:200])
            with torch.cuda.stream(stream):
                backend = self._warm_up()
            graph = self._record_graph(stream, pool, backend)
        warmed_up_backends[warm_up_key] = backend
        _LAST_GRAPHS[self.device] = graph
        self.graph, self.attention_backend = graph, backend  # only once captured: none to replay after a failure

    def _record_graph(self, stream, pool, backend):
        import torch

        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        # The kernel choice is recorded in the graph: it holds for every replay. Nothing compiles inside the
        # capture: a torch.compile'd function (DecodeLayer's) that would recompile fails instead, and the caller
        # warms up (compiling there) and records again.
        with attention_kernel(backend), torch.cuda.stream(stream), torch.compiler.set_stance("fail_on_recompile"):
            graph.capture_begin(pool=pool)
            try:
                self._decode_step()
            finally:
                graph.capture_end()
        return graph

    def _warm_up(self) -> str | None:
        """One decode step (cuBLAS's workspace for the side stream, allocator pools, Triton kernels compiled) on
        the first backend of ``attention_backends`` that takes the step, enabled alone: under the whole list as a
        priority order, the first graph of a process recorded cuDNN's kernel (H100, torch 2.11;
        bench/bench_decode_step.py)."""
        choices = list(self.attention_backends) if self.attention_backends else [None]
        for backend in choices:
            try:
                with attention_kernel(backend):
                    self._decode_step()
            except RuntimeError as error:
                if not any(text in str(error) for text in NO_ATTENTION_KERNEL) or backend == choices[-1]:
                    raise
                log.warning("decode step: sdpa backend %s cannot take it, trying the next", backend)
                continue
            log.info("decode step on sdpa backend %s", backend or "(the caller's choice)")
            return backend
        raise AssertionError("unreachable")

    def _allocate_cache(self):
        """Allocate every cache layer now (they allocate on their first write otherwise)."""
        import torch

        c = self.text_config
        example = torch.empty(self.rows, c.num_key_value_heads, 1, head_dim(c), dtype=self.dtype, device=self.device)
        for layer in self.cache.layers:
            if not layer.is_initialized:
                layer.lazy_initialization(example, example)

    def _lap(self, phase: str, started: float) -> float:
        """Add the (synchronised) time since ``started`` to ``phase``; return now."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[phase] += now - started
        return now

    def generate(self, prompts: list[list[int]]) -> list[GeneratedSequence]:
        import torch

        if not prompts or len(prompts) > self.rows:
            raise ValueError(f"a batch holds 1 to {self.rows} prompts, got {len(prompts)}")
        # Fill the batch with copies of the first prompt; their outputs are dropped.
        padded = list(prompts) + [prompts[0]] * (self.rows - len(prompts))
        with torch.inference_mode():
            started = time.perf_counter()
            if self.use_cuda_graph and self.graph is None:
                self._capture()
            started = self._lap("capture", started)
            self._prefill(padded)
            started = self._lap("prefill", started)
            for step in range(1, self.settings.max_new_tokens):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._decode_step()
                if step % FINISH_CHECK_EVERY == 0 and bool(self.finished[: len(prompts)].all()):
                    break
            tokens = self.output[: len(prompts)].tolist()
            finished = self.finished[: len(prompts)].tolist()
            self._lap("decode", started)
        eos = set(self.eos.tolist())
        results = []
        for row_tokens, done in zip(tokens, finished):
            if done:
                end = next(i for i, t in enumerate(row_tokens) if t in eos) + 1
                results.append(GeneratedSequence(row_tokens[:end], truncated=False))
            else:
                results.append(GeneratedSequence(row_tokens, truncated=True))
        return results


def generate_completions(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    settings: SamplingSettings,
    pad_token_id: int,
    eos_token_ids: Sequence[int],
    batch_size: int = 0,
    seed: int | None = 0,
    use_cuda_graph: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    phase_seconds: dict[str, float] | None = None,
    decode_layers: bool = False,
) -> list[GeneratedSequence]:
    """Generate for every prompt (token ids, unpadded); results in input order.

    Prompts are sorted by length (longest first, so the largest batch runs first and fails early if memory
    is short) and split into equal batches; ``batch_size`` 0 picks it from free memory. ``seed`` None leaves
    the global RNG as it is (training: reseeding every step would repeat the random stream).
    ``phase_seconds``, if given, gets the seconds spent capturing, prefilling and decoding added to it.
    ``decode_layers`` runs the decode step's layers through ``decode_layer.DecodeLayer``: a shorter step, after a
    compile once a process on a GPU; worth it for a training run's many rollouts, not for one evaluation pass.
    """
    import torch

    if not prompts:
        return []
    if pad_token_id in set(eos_token_ids):
        raise ValueError("pad token must differ from EOS: padding with EOS marks rows as finished")
    if seed is not None:
        torch.manual_seed(seed)
    max_prompt_len = max(len(p) for p in prompts)
    cache_len = max_prompt_len + settings.max_new_tokens
    language_model = model.model.language_model
    weight_bytes = fused_weight_bytes(fusable_projections(language_model))
    if decode_layers:
        weight_bytes += decode_layer.weight_bytes(language_model)
    rows = batch_size or auto_batch_size(model, cache_len=cache_len, num_rows=len(prompts), extra_bytes=weight_bytes)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    batches = _even_batches(order, rows)
    generator = StaticBatchGenerator(
        model,
        rows=len(batches[0]),
        max_prompt_len=max_prompt_len,
        settings=settings,
        pad_token_id=pad_token_id,
        eos_token_ids=eos_token_ids,
        use_cuda_graph=use_cuda_graph,
        decode_layers=decode_layers,
    )
    log.info(
        "generating for %d prompts in %d batches of %d rows (cache %d tokens, cuda graph %s)",
        len(prompts), len(batches), generator.rows, cache_len, generator.use_cuda_graph,
    )
    results: list[GeneratedSequence | None] = [None] * len(prompts)
    done = 0
    started = time.perf_counter()
    for batch in batches:
        for index, result in zip(batch, generator.generate([list(prompts[i]) for i in batch])):
            results[index] = result
        done += len(batch)
        if progress:
            progress(done, len(prompts))
        log.info("generated %d/%d prompts (%.1f s)", done, len(prompts), time.perf_counter() - started)
    if phase_seconds is not None:
        for phase, seconds in generator.seconds.items():
            phase_seconds[phase] = phase_seconds.get(phase, 0.0) + seconds
    return results  # type: ignore[return-value]
