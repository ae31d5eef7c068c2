"""python -m components.demo_data --output-dir DIR: write the synthetic demo splits (the bundled files)."""

from __future__ import annotations

import argparse

from components.common.errors import cli_main
from components.common.jsonl import write_jsonl
from components.demo_data import DEMO_SEED, SPLIT_FILES, generate_demo_rows


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m components.demo_data", description=__doc__)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    args = parser.parse_args(argv)
    for split, rows in generate_demo_rows(args.seed).items():
        write_jsonl(f"{args.output_dir}/{SPLIT_FILES[split]}", rows)


if __name__ == "__main__":
    raise SystemExit(main())
