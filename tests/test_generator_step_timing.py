"""bench/bench_decode_step.py: the fixed + per-row split it reports, and its CPU smoke run."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_decode_step  # noqa: E402


def test_fit_recovers_fixed_and_per_row_cost():
    points = [{"rows": rows, "ms_per_step": 4.0 + 0.05 * rows} for rows in (64, 128, 256)]
    assert bench_decode_step.fit_fixed_and_per_row(points) == {"fixed_ms": 4.0, "per_row_ms": 0.05}
    assert bench_decode_step.fit_fixed_and_per_row(points[:1]) == {}  # one row count: no line


def test_cpu_smoke_run_writes_a_step_per_row_count(tmp_path):
    output = tmp_path / "decode.json"
    assert bench_decode_step.main(["--tiny", "--rows", "2,4", "--steps", "2", "--new-tokens", "8", "--eager",
                                   "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert [step["rows"] for step in report["steps"]] == [2, 4]
    assert all(step["ms_per_step"] > 0 and step["eager_ms_per_step"] > 0 for step in report["steps"])
    assert set(report["fit"]) == {"fixed_ms", "per_row_ms"}


def test_more_steps_than_the_cache_holds_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench_decode_step.main(["--tiny", "--steps", "8", "--new-tokens", "8"])
    assert "--new-tokens of at least 10" in capsys.readouterr().err
