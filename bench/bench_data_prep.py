"""Data prep at full MedQA scale (~12.7k rows): wall seconds of the step, in-process and through its CLI.

Builds, in a temporary folder, a MedQA-release-layout source of the real size (train 10,178, dev 1,272,
test 1,273) from the real test questions in ../shared/data/medqa: test is the real split; train and dev are
its questions with a distinct prefix per copy (so they are neither duplicates nor leakage). Nothing is written
into the repository. The prompt tokens are counted with ``--model`` (default: the tiny offline Gemma 3 built
here; pass ``google/medgemma-4b-it`` where the Hub is reachable for the real tokenizer).

    python bench/bench_data_prep.py [--model PATH_OR_ID] [--output bench_data_prep.json]
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

REPO = Path(__file__).resolve().parents[1]
MEDQA_TEST = REPO.parent / "shared" / "data" / "medqa" / "medqa_us4_test.jsonl"
SPLIT_SIZES = {"train": 10_178, "dev": 1_272, "test": 1_273}  # MedQA US (4 options)
TARGET_SECONDS = 30.0


def build_source(folder: Path) -> dict[str, int]:
    from components.common.jsonl import read_jsonl, write_jsonl

    if not MEDQA_TEST.is_file():
        raise SystemExit(f"real MedQA test questions not found at {MEDQA_TEST}")
    real = read_jsonl(MEDQA_TEST)
    write_jsonl(folder / "test.jsonl", real[: SPLIT_SIZES["test"]])
    for split in ("train", "dev"):
        rows = [
            dict(
                real[i % len(real)],
                question=f"{split} copy {i // len(real)}. {real[i % len(real)]['question']}",
                realidx=i,
            )
            for i in range(SPLIT_SIZES[split])
        ]
        write_jsonl(folder / f"{split}.jsonl", rows)
    return {split: n for split, n in SPLIT_SIZES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", help="model id/path whose tokenizer counts prompt tokens (default: tiny Gemma 3 built here)"
    )
    parser.add_argument("--max-prompt-tokens", type=int, default=512)
    parser.add_argument("--output", help="also write the JSON result here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as tmp:
        tmp = Path(tmp)
        rows = build_source(tmp / "source")
        model = args.model
        if model is None:
            from components.tiny_model.core import build_tiny_model

            model = str(tmp / "tiny_model")
            build_tiny_model(model)
        # The tiny tokenizer splits real text ~2x finer than Gemma's; a budget that scales with it keeps the
        # row counts comparable (the time is what is measured here).
        budget = args.max_prompt_tokens if args.model else 2 * args.max_prompt_tokens

        from components.data_prep.core import prepare_medqa

        start = time.perf_counter()
        stats = prepare_medqa(
            str(tmp / "source"), tmp / "out", tokenizer=model, max_prompt_tokens=budget, max_reject_rate=1.0
        )
        in_process_s = time.perf_counter() - start

        # The whole CLI, interpreter start and imports included: what a pipeline task pays.
        start = time.perf_counter()
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "components.data_prep",
                "--source",
                str(tmp / "source"),
                "--output-dir",
                str(tmp / "cli_out"),
                "--model",
                model,
                "--max-prompt-tokens",
                str(budget),
                "--max-reject-rate",
                "1.0",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        cli_s = time.perf_counter() - start
        if cli.returncode != 0:
            raise SystemExit(f"CLI failed: {cli.stderr.strip().splitlines()[-1:]}")

    result = {
        "benchmark": "data_prep",
        "input_rows": rows,
        "input_rows_total": sum(rows.values()),
        "output_rows": stats["output_rows"],
        "rejected": stats["rejected"]["by_reason"],
        "tokenizer": "tiny Gemma 3 (offline)" if args.model is None else args.model,
        "max_prompt_tokens": budget,
        "prompt_tokens_train": stats["prompt_tokens"]["train"],
        "in_process_wall_s": round(in_process_s, 2),
        "cli_wall_s": round(cli_s, 2),
        "target_s": TARGET_SECONDS,
        "meets_target": cli_s <= TARGET_SECONDS,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
