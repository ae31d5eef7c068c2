"""The generator (components/generator) against transformers' own generate (greedy: token for token)."""

import inspect

import pytest


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from components.common.modeling import load_model, load_processor

    return load_model(tiny_model_dir, dtype="float32", device="cpu"), load_processor(tiny_model_dir).tokenizer


def _prompts(tokenizer, texts):
    out = []
    for text in texts:
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        out.append(list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded))
    return out


TEXTS = [
    "A 45-year-old man has chest pain radiating to the left arm for two hours. Which test first?",
    "Fever and rash in a child.",
    "hi",
    "Which enzyme is deficient in a newborn with jaundice, anemia and dark urine after fava beans?",
]


def _reference(model, tokenizer, prompts, new_tokens):
    enc = tokenizer.pad({"input_ids": prompts}, return_tensors="pt", padding_side="left")
    out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=list(model.generation_config.eos_token_id))
    return out[:, enc["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("sliding_window", [None, 12])
@pytest.mark.parametrize("prefill_chunk", [None, 5])
@pytest.mark.parametrize("decode_layers", [True, False])
def test_greedy_matches_generate_with_left_padding_and_sliding_layers(tiny, sliding_window, prefill_chunk, decode_layers,
                                                                     monkeypatch):
    from components.generator import SamplingSettings, decode_layer, engine, generate_completions

    model, tokenizer = tiny
    if prefill_chunk:  # 4 prompts in batches of 2 rows: prefilled 5 positions at a time
        monkeypatch.setattr(engine, "PREFILL_TOKENS", 2 * prefill_chunk)
    # Keys each attention layer reads: during prefill only the slots filled so far (the model's layers), while
    # decoding the whole cache (the generator's DecodeLayers, or the model's layers without them).
    layer_class = engine._slot_static_layer_class()
    read_lengths, decode_reads = [], []

    def recording_update(self, *args, **kwargs):
        keys, values = update(self, *args, **kwargs)
        read_lengths.append(keys.shape[-2])
        return keys, values

    def recording_decode(*args):
        query = norm_rope_and_store(*args)
        keys = inspect.signature(norm_rope_and_store).bind(*args).arguments["keys"]
        decode_reads.append(keys.shape[-2])
        return query

    update, norm_rope_and_store = layer_class.update, decode_layer.norm_rope_and_store
    monkeypatch.setattr(layer_class, "update", recording_update)
    monkeypatch.setattr(decode_layer, "norm_rope_and_store", recording_decode)
    text_config = model.config.get_text_config()
    saved = (text_config.sliding_window, list(text_config.layer_types))
    if sliding_window:  # a window shorter than prompt + completion: the sliding mask must drop old keys
        text_config.sliding_window = sliding_window
    try:
        prompts = _prompts(tokenizer, TEXTS)
        eos = list(model.generation_config.eos_token_id)
        ours = generate_completions(model, prompts, settings=SamplingSettings(do_sample=False, max_new_tokens=24),
                                    pad_token_id=tokenizer.pad_token_id, eos_token_ids=eos, batch_size=3,
                                    decode_layers=decode_layers)
        reference = _reference(model, tokenizer, prompts, 24)
    finally:
        text_config.sliding_window, text_config.layer_types = saved[0], saved[1]
    cache_len = max(map(len, prompts)) + 24
    layers = model.config.get_text_config().num_hidden_layers
    if not decode_layers:  # the model's layers read through the cache's update, then the whole cache
        decode_reads = [n for n in read_lengths if n == cache_len]
        read_lengths = [n for n in read_lengths if n < cache_len]
    prefill_reads = sorted(set(read_lengths))
    assert prefill_reads[-1] < cache_len and set(decode_reads) == {cache_len}
    assert len(decode_reads) == 2 * 23 * layers  # 2 batches x 23 decode steps: every layer
    if prefill_chunk:
        assert prefill_reads[:2] == [5, 10]  # the first chunks of a batch read 5, then 10 slots
    else:
        assert len(prefill_reads) == 2  # one prefill per batch, each reading its own prompt width
    for result, ref in zip(ours, reference):
        assert result.token_ids == ref[: len(result.token_ids)]
        if result.truncated:
            assert len(result.token_ids) == 24
        else:
            assert result.token_ids[-1] in eos


def test_sampling_respects_top_k_and_seed(tiny):
    import torch

    from components.generator import SamplingSettings, generate_completions
    from components.generator.sampling import Sampler

    model, tokenizer = tiny
    logits = torch.randn(4, 50)
    torch.manual_seed(0)
    sampler = Sampler(SamplingSettings(top_k=3, max_new_tokens=4), vocab_size=50)
    allowed = logits.topk(3, dim=-1).indices
    for _ in range(20):
        picked = sampler(logits)
        assert all(picked[i] in allowed[i] for i in range(4))
    # top_p so small that only the most likely token survives: sampling becomes greedy.
    nucleus = Sampler(SamplingSettings(top_p=1e-6, temperature=0.7, max_new_tokens=4), vocab_size=50)
    assert torch.equal(nucleus(logits), logits.argmax(-1))
    prompts = _prompts(tokenizer, TEXTS)
    settings = SamplingSettings(do_sample=True, max_new_tokens=8)
    kwargs = dict(settings=settings, pad_token_id=0, eos_token_ids=[1, 6], batch_size=2)
    first = generate_completions(model, prompts, seed=5, **kwargs)
    assert [r.token_ids for r in first] == [r.token_ids for r in generate_completions(model, prompts, seed=5, **kwargs)]


def test_pad_equal_to_eos_is_refused(tiny):
    from components.generator import SamplingSettings, generate_completions

    model, _ = tiny
    with pytest.raises(ValueError, match="pad token must differ from EOS"):
        generate_completions(model, [[2, 5]], settings=SamplingSettings(max_new_tokens=4), pad_token_id=1, eos_token_ids=[1])


def test_batches_are_even_and_longest_first():
    from components.generator.engine import _even_batches

    batches = _even_batches(list(range(1273)), 512)
    assert [len(b) for b in batches] == [425, 425, 423]  # one graph of 425 rows; the last batch is padded
    assert sum(batches, []) == list(range(1273))


def test_fused_projections_give_each_its_own_projection_and_are_put_back(tiny):
    """The generator reads q, k and v through one matmul (the greedy test above runs with it). Each member
    returns what its projection computes, for its own input in any call order, and only while swapped in."""
    import torch

    from components.generator import SamplingSettings
    from components.generator.engine import StaticBatchGenerator

    model, tokenizer = tiny
    generator = StaticBatchGenerator(model, rows=2, max_prompt_len=8, settings=SamplingSettings(max_new_tokens=4),
                                     pad_token_id=tokenizer.pad_token_id, eos_token_ids=[1], use_cuda_graph=False)
    layers = generator.language_model.layers
    assert len(generator.fused_groups) == len(layers)
    attention = layers[0].self_attn
    originals = (attention.q_proj, attention.k_proj, attention.v_proj)
    x, other = torch.randn(2, 1, model.config.get_text_config().hidden_size), torch.randn(2, 1, model.config.get_text_config().hidden_size)
    with torch.no_grad():
        expected = [proj(x) for proj in originals]
        with generator.fused_groups[0].swapped_in():
            assert attention.q_proj is not originals[0]
            got_v = attention.v_proj(x)  # out of order
            assert generator.fused_groups[0].input is x  # q's and k's slices still to come
            got_q, got_k = attention.q_proj(x), attention.k_proj(x)
            assert generator.fused_groups[0].input is None  # all three served: the layer's outputs are not held
            got_k_other = attention.k_proj(other)  # another input: its own matmul
    assert (attention.q_proj, attention.k_proj, attention.v_proj) == originals
    for got, want in zip((got_q, got_k, got_v), expected):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_k_other, originals[1](other).detach())


def test_decode_steps_on_the_blank_cache_before_the_prefill_change_nothing(tiny):
    """The CUDA-graph capture runs decode steps on the freshly allocated cache before any prompt; the prefill
    that follows must reset everything they touched (run eagerly here: the same state, no graph)."""
    from components.generator import SamplingSettings
    from components.generator.engine import StaticBatchGenerator

    model, tokenizer = tiny
    prompts = _prompts(tokenizer, TEXTS[:2])
    eos = list(model.generation_config.eos_token_id)

    def generator():
        return StaticBatchGenerator(model, rows=2, max_prompt_len=max(map(len, prompts)),
                                    settings=SamplingSettings(do_sample=False, max_new_tokens=16),
                                    pad_token_id=tokenizer.pad_token_id, eos_token_ids=eos, use_cuda_graph=False)

    fresh = [r.token_ids for r in generator().generate(prompts)]
    warmed = generator()
    warmed._allocate_cache()
    for _ in range(3):
        warmed._decode_step()
    assert [r.token_ids for r in warmed.generate(prompts)] == fresh
    assert [r.token_ids for r in warmed.generate(prompts[::-1])] == fresh[::-1]  # reused for a second batch


def test_warm_up_uses_the_first_attention_backend_that_takes_the_step_alone(tiny):
    """The decode graph is recorded under one sdpa backend enabled alone (a priority list let the first graph
    of a process take cuDNN's kernel on an H100). On CPU the mem-efficient and cuDNN kernels do not exist, so
    the warm-up passes over them to MATH; an error other than "no kernel" is not swallowed."""
    import pytest

    from components.generator import SamplingSettings
    from components.generator.engine import StaticBatchGenerator

    model, tokenizer = tiny
    prompts = _prompts(tokenizer, TEXTS[:2])
    eos = list(model.generation_config.eos_token_id)
    generator = StaticBatchGenerator(model, rows=2, max_prompt_len=max(map(len, prompts)),
                                     settings=SamplingSettings(do_sample=False, max_new_tokens=8),
                                     pad_token_id=tokenizer.pad_token_id, eos_token_ids=eos, use_cuda_graph=False,
                                     attention_backends=("EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"))
    generator._allocate_cache()
    assert generator._warm_up() == "MATH"

    generator.attention_backends = ("EFFICIENT_ATTENTION",)  # nothing left to fall back to
    with pytest.raises(RuntimeError, match="No viable backend"):
        generator._warm_up()

    calls = []

    def broken_step():
        calls.append(1)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    generator.attention_backends = ("EFFICIENT_ATTENTION", "MATH")
    generator._decode_step = broken_step
    with pytest.raises(RuntimeError, match="illegal memory access"):
        generator._warm_up()
    assert len(calls) == 1  # not retried under MATH


def test_capture_releases_the_cache_only_when_short_shares_one_pool_warms_up_once_and_always_ends_the_capture(
        tiny, monkeypatch):
    """The graph is recorded without torch.cuda.graph's unconditional cache release: the cache is released only
    when the device lacks twice a step's transient memory. Every graph of the device records into one memory
    pool, so finished generators' pools do not pile up. Only the first generator of its kind in the process
    warms up; a later one whose recording fails warms up and records again. A recording that fails after a
    warm-up still ends the capture and leaves no graph to replay. (CUDA stand-ins: on CPU the decode step runs
    where the capture would be.)"""
    import contextlib
    import weakref

    import torch

    from components.generator import SamplingSettings, engine, memory

    model, tokenizer = tiny
    prompts = _prompts(tokenizer, TEXTS[:2])
    events = []

    class FakeStream:
        def __init__(self, *args):
            pass

        def wait_stream(self, other):
            pass

    pools = []

    class FakeGraph:
        def capture_begin(self, pool=None):
            events.append("begin")
            pools.append(pool)
            self.memory_pool = pool or f"pool {len(pools)}"  # a new one unless given

        def pool(self):
            return self.memory_pool

        def capture_end(self):
            events.append("end")

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("release"))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(engine, "_RECORDING_STREAMS", {})
    monkeypatch.setattr(engine, "_LAST_GRAPHS", {})
    monkeypatch.setattr(engine, "_WARMED_UP_BACKENDS", weakref.WeakKeyDictionary())
    free = {"bytes": 0}
    monkeypatch.setattr(engine, "free_device_bytes", lambda device, count_cached: free["bytes"])
    warm_up = engine.StaticBatchGenerator._warm_up

    def logged_warm_up(self):
        events.append("warm-up")
        return warm_up(self)

    monkeypatch.setattr(engine.StaticBatchGenerator, "_warm_up", logged_warm_up)

    def generator(rows=2):
        return engine.StaticBatchGenerator(
            model, rows=rows, max_prompt_len=max(map(len, prompts)), pad_token_id=tokenizer.pad_token_id,
            settings=SamplingSettings(do_sample=False, max_new_tokens=8),
            eos_token_ids=list(model.generation_config.eos_token_id), use_cuda_graph=False,
            attention_backends=("EFFICIENT_ATTENTION", "MATH"))

    step_bytes = 2 * memory.sampling_bytes_per_row(model.config.get_text_config())  # 2 rows
    free["bytes"] = 2 * step_bytes  # just enough room for the graph's pool
    plenty = generator()
    plenty._capture()
    assert events == ["warm-up", "begin", "end"]
    assert isinstance(plenty.graph, FakeGraph) and plenty.attention_backend == "MATH"

    events.clear()
    free["bytes"] = 2 * step_bytes - 1
    short = generator()  # the same kind: no warm-up, the backend the first one found
    short._capture()
    assert events == ["release", "begin", "end"] and short.attention_backend == "MATH"

    def failing_in_first_capture(gen):
        real_step = gen._decode_step
        captures = []

        def step():
            if events and events[-1] == "begin":
                captures.append(1)
                if len(captures) == 1:
                    raise RuntimeError("operation not permitted when stream is capturing")
            real_step()

        gen._decode_step = step
        return gen

    events.clear()
    free["bytes"] = 2 * step_bytes
    recovering = failing_in_first_capture(generator())  # warmed-up kind: fails, warms up, records again
    recovering._capture()
    assert events == ["begin", "end", "warm-up", "begin", "end"] and isinstance(recovering.graph, FakeGraph)

    events.clear()
    free["bytes"] = 10 * step_bytes
    failing = failing_in_first_capture(generator(rows=3))  # a new kind: warmed up, so the failure is final
    with pytest.raises(RuntimeError, match="stream is capturing"):
        failing._capture()
    assert events == ["warm-up", "begin", "end"] and failing.graph is None
    # The first recording makes a pool; every later one, of every generator, records into it.
    assert pools == [None] + ["pool 1"] * 4
    assert engine._LAST_GRAPHS[plenty.device] is recovering.graph  # the last graph recorded, kept alive


def test_nothing_compiles_inside_a_capture(tiny, monkeypatch):
    """A torch.compile'd function (DecodeLayer's) that would recompile inside the graph capture fails there
    instead (the caller then warms up and records again); outside a capture it compiles. (CUDA stand-ins.)"""
    import contextlib

    import torch

    from components.generator import SamplingSettings, engine

    model, tokenizer = tiny

    class FakeGraph:
        def capture_begin(self, pool=None):
            pass

        def capture_end(self):
            pass

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    doubled = torch.compile(lambda x: x * 2, dynamic=False, backend="eager")
    doubled(torch.ones(2))  # compiled for 2 elements
    generator = engine.StaticBatchGenerator(
        model, rows=2, max_prompt_len=4, pad_token_id=tokenizer.pad_token_id,
        settings=SamplingSettings(do_sample=False, max_new_tokens=4), eos_token_ids=[1], use_cuda_graph=False)
    generator._decode_step = lambda: doubled(torch.ones(3))  # 3 elements: a recompile
    with pytest.raises(RuntimeError, match="fail_on_recompile"):
        generator._record_graph(stream=None, pool=None, backend=None)
    assert doubled(torch.ones(3)).tolist() == [2.0, 2.0, 2.0]  # outside the capture it compiles


def test_free_memory_counts_cached_blocks_only_where_asked_and_respects_a_memory_cap(monkeypatch):
    """On a GPU the rollout's batch size comes from free memory: the card's free memory plus what this process
    has cached but not in use (no cache release before each rollout), within a per-process cap if one is set."""
    from types import SimpleNamespace

    import torch

    from components.generator import memory

    gib = 2**30
    text = SimpleNamespace(num_hidden_layers=2, num_key_value_heads=1, head_dim=64, hidden_size=64,
                           num_attention_heads=1, intermediate_size=128, vocab_size=1000)
    parameter = SimpleNamespace(device=torch.device("cuda", 0), element_size=lambda: 2)
    model = SimpleNamespace(parameters=lambda: iter([parameter]),
                            config=SimpleNamespace(get_text_config=lambda: text))
    per_row = 100 * memory.kv_bytes_per_token(text, 2) + 6 * text.vocab_size * 4
    prefill = memory.PREFILL_TOKENS * (3 * text.intermediate_size + 4 * text.hidden_size) * 2

    def rows_for(free_gib):
        return (int(free_gib * gib * 0.9) - prefill) // per_row

    cap = {"fraction": 1.0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10 * gib)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: cap["fraction"])
    monkeypatch.setattr(memory, "MAX_AUTO_BATCH", 10**9)

    # 2 GiB free on the card + 20 GiB cached and unused by this process.
    assert memory.auto_batch_size(model, cache_len=100, num_rows=10**9) == rows_for(22)
    # Capped at 16 GiB with 10 GiB allocated: 6 GiB left, whatever is cached.
    cap["fraction"] = 0.2
    assert memory.auto_batch_size(model, cache_len=100, num_rows=10**9) == rows_for(6)
    assert memory.auto_batch_size(model, cache_len=100, num_rows=5) == 5  # never more rows than prompts

    # Without the cached blocks (what a CUDA graph's own pool can get): the card's 2 GiB, then within the cap
    # the 16 GiB minus the 30 GiB reserved: nothing.
    cap["fraction"] = 1.0
    assert memory.free_device_bytes(parameter.device, count_cached=False) == 2 * gib
    cap["fraction"] = 0.2
    assert memory.free_device_bytes(parameter.device, count_cached=False) == int(0.2 * 80 * gib) - 30 * gib
