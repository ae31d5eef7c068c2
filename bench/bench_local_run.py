"""Benchmark the local pipeline run against its targets: <= 5 min wall on 2 CPU cores, tuned beats baseline
with McNemar p < 0.01 on the demo task. Cold by default (the tiny model is built and warm-started too).

    python bench/bench_local_run.py --output bench/results/local_run_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_WALL_SECONDS = 300
TARGET_P_VALUE = 0.01


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", help="write the JSON result here too")
    parser.add_argument("--workdir", help="reuse this workdir (warm cache); default: a fresh temporary one (cold)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir or Path(scratch) / "work")
        summary_path = Path(scratch) / "summary.json"
        started = time.monotonic()
        subprocess.run([sys.executable, "pipelines/run_local.py", "--workdir", str(workdir),
                        "--summary-json", str(summary_path)], cwd=REPO_ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.monotonic() - started
        summary = json.loads(summary_path.read_text())
    import torch

    result = {
        "benchmark": "local pipeline run (kfp.local, tiny model, demo data, CPU)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "cache": "warm" if args.workdir else "cold (tiny model built and warm-started in the run)",
        "wall_seconds": round(wall, 1),
        "models": [{key: model[key] for key in ("name", "recipe", "baseline_accuracy", "tuned_accuracy", "delta",
                                                "p_value", "n", "registered")} for model in summary["models"]],
        "targets": {"wall_seconds_max": TARGET_WALL_SECONDS, "p_value_max": TARGET_P_VALUE},
        "meets_targets": wall <= TARGET_WALL_SECONDS and bool(summary["models"]) and all(
            model["p_value"] < TARGET_P_VALUE and model["tuned_accuracy"] > model["baseline_accuracy"]
            for model in summary["models"]),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
