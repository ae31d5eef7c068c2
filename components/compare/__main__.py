"""CLI: python -m components.compare --baseline EVAL_OUT --tuned EVAL_OUT --output-dir OUT"""

from __future__ import annotations

import argparse
import logging

from components.common.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.compare",
        description="Pair two evaluate outputs by question id; write comparison.json and report.md.",
    )
    parser.add_argument("--baseline", required=True, help="evaluate output folder of the base model")
    parser.add_argument("--tuned", required=True, help="evaluate output folder of the tuned model")
    parser.add_argument("--output-dir", required=True, help="folder for comparison.json and report.md")
    parser.add_argument("--margin", type=float, default=0.0, help="minimum accuracy gain to pass the gate (0.01 = 1 pt)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired test")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from components.compare.core import compare_evaluations

    compare_evaluations(args.baseline, args.tuned, args.output_dir, margin=args.margin, alpha=args.alpha)


if __name__ == "__main__":
    raise SystemExit(main())
