"""CLI: python -m components.evaluate --model ID_OR_PATH [--adapter PATH] --data TEST.jsonl --output-dir OUT"""

from __future__ import annotations

import argparse
import logging

from components.common.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.evaluate",
        description="Generate answers for every test question; write metrics.json and predictions.jsonl.",
    )
    parser.add_argument("--model", required=True, help="model id (google/medgemma-4b-it) or local checkpoint folder")
    parser.add_argument("--adapter", default=None, help="PEFT LoRA adapter folder to apply (merged) on the model")
    parser.add_argument("--data", required=True, help="test.jsonl written by data prep")
    parser.add_argument("--output-dir", required=True, help="folder for metrics.json and predictions.jsonl")
    parser.add_argument("--recipe", default="medgemma-4b", help="recipe name or path to a recipe YAML")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N questions (0: the full split)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="recipe override, e.g. evaluation.do_sample=false or evaluation.samples_per_question=4 (repeatable)",
    )
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from components.evaluate.core import evaluate_model

    evaluate_model(
        args.model, args.data, args.output_dir, adapter=args.adapter, recipe=args.recipe, overrides=args.overrides, limit=args.limit
    )


if __name__ == "__main__":
    raise SystemExit(main())
