"""components/generator/step_timing.py (what the decode-step benchmarks measure), and bench_decode_step.py's
CPU smoke run as its CLI."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fit_recovers_fixed_and_per_row_cost():
    from components.generator.step_timing import fit_fixed_and_per_row

    points = [{"rows": rows, "ms_per_step": 4.0 + 0.05 * rows} for rows in (64, 128, 256)]
    assert fit_fixed_and_per_row(points) == {"fixed_ms": 4.0, "per_row_ms": 0.05}
    assert fit_fixed_and_per_row(points[:1]) == {}  # one row count: no line


def test_matmul_shapes_are_the_4b_decode_steps_with_qkv_fused():
    from components.generator.step_timing import decode_matmul_shapes
    from components.tiny_model.core import GEMMA3_4B_TEXT

    shapes = decode_matmul_shapes(GEMMA3_4B_TEXT)
    assert shapes == {
        "qkv": (4096, 2560, 34),  # 8 query heads + 2 x 4 key/value heads of 256
        "o_proj": (2560, 2048, 34),
        "gate|up": (10240, 2560, 68),  # two matmuls a layer
        "down": (2560, 10240, 34),
        "lm_head": (262_208, 2560, 1),
    }
    weights = sum(out * inp * calls for out, inp, calls in shapes.values())
    assert 3.8e9 < weights < 3.9e9  # every weight read once a step: the 4B's text model


def test_decode_step_is_timed_per_row_count_with_every_fusion(tiny_model_dir):
    from components.common.modeling import load_model
    from components.generator import SamplingSettings
    from components.generator.step_timing import FUSIONS, time_decode_step

    model = load_model(tiny_model_dir, dtype="float32", device="cpu")
    prompts = [[2] + list(range(10, 10 + length)) for length in (9, 14, 6, 11)]
    settings = SamplingSettings(do_sample=True, max_new_tokens=8)
    layers = model.config.get_text_config().num_hidden_layers
    for fusion, (groups, decode_layers) in FUSIONS.items():
        step = time_decode_step(model, prompts, rows=4, settings=settings, steps=2, pad_token_id=0,
                                eos_token_ids=[1], eager=True, fusion=fusion)
        assert step["rows"] == 4 and step["cache_len"] == 15 + 8 and step["backend"] is None  # CPU: no graph
        assert step["ms_per_step"] > 0 and step["eager_ms_per_step"] > 0
        assert step["fused_groups"] == len(groups) * layers
        assert step["decode_layers"] == (layers if decode_layers else 0)


def _bench_decode_step(*args):
    return subprocess.run([sys.executable, str(REPO / "bench" / "bench_decode_step.py"), *args], cwd=REPO,
                          capture_output=True, text=True, check=False)


def test_cpu_smoke_run_writes_a_step_per_row_count(tmp_path):
    output = tmp_path / "decode.json"
    run = _bench_decode_step("--tiny", "--rows", "2,4", "--steps", "2", "--new-tokens", "8", "--eager",
                             "--output", str(output))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(output.read_text())
    assert [step["rows"] for step in report["steps"]] == [2, 4]
    assert all(step["ms_per_step"] > 0 and step["eager_ms_per_step"] > 0 for step in report["steps"])
    assert set(report["fit"]) == {"fixed_ms", "per_row_ms"}


def test_more_steps_than_the_cache_holds_are_refused():
    run = _bench_decode_step("--tiny", "--steps", "8", "--new-tokens", "8")
    assert run.returncode == 2 and "--new-tokens of at least 10" in run.stderr
