"""CLI: python -m components.results_table {model-result,table} ..."""

from __future__ import annotations

import argparse
import logging

from components.common.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.results_table",
        description="The run's results table: one model_result.json per model, then table.json/.md/.html.",
    )
    steps = parser.add_subparsers(dest="command", required=True)
    one = steps.add_parser("model-result", help="one model's row from its evaluations, comparison and registration")
    one.add_argument("--name", required=True, help="the model entry's name, unique in the run")
    one.add_argument("--base-model", required=True, help="the base model's id or folder")
    one.add_argument("--recipe", required=True, help="the recipe the model was tuned with")
    one.add_argument("--baseline", required=True, help="evaluate output folder (or metrics.json) of the base model")
    one.add_argument("--tuned", required=True, help="evaluate output folder (or metrics.json) of the tuned model")
    one.add_argument("--comparison", required=True, help="compare output folder (or comparison.json)")
    one.add_argument("--registered", default="",
                     help="register's resource name (Vertex) or folder (file registry); empty: not registered")
    one.add_argument("--output", required=True, help="the model_result.json to write")
    table = steps.add_parser("table", help="join model results into table.json, table.md and table.html")
    table.add_argument("model_results", nargs="+", help="model_result.json files (or their folders), in table order")
    table.add_argument("--output-dir", required=True, help="folder for table.json, table.md and table.html")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from components.results_table.core import collect_model_result, render_markdown, write_results_table

    if args.command == "model-result":
        collect_model_result(args.name, args.base_model, args.recipe, args.baseline, args.tuned, args.comparison,
                             args.registered, args.output)
    else:
        print(render_markdown(write_results_table(args.model_results, args.output_dir)), end="")


if __name__ == "__main__":
    raise SystemExit(main())
