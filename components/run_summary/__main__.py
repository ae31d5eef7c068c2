"""CLI: ``python -m components.run_summary RUN``: the summary of a finished pipeline run, local or on Vertex."""

from __future__ import annotations

import argparse
from pathlib import Path

from components.common.errors import UserError, cli_main
from components.run_summary.core import build_summary, render_summary, tasks_from_local_run, tasks_from_vertex


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.run_summary",
        description="Summarize a pipeline run: state, failed task and, per model, accuracies with CIs, p-value, "
        "registered model.",
    )
    parser.add_argument("run", help="a kfp.local run folder, or a Vertex job projects/P/locations/L/pipelineJobs/J")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.run.startswith("projects/"):
        tasks = tasks_from_vertex(args.run)
    elif Path(args.run).is_dir():
        tasks = tasks_from_local_run(args.run)
    else:
        raise UserError(f"run: {args.run!r} is neither a run folder nor projects/P/locations/L/pipelineJobs/J")
    every_task = [*tasks.run.values(), *(task for branch in tasks.branches for task in branch.values()),
                  *tasks.unattributed.values()]
    failed = any(task.state not in ("SUCCEEDED", "SKIPPED") for task in every_task)
    summary = build_summary("FAILED" if failed else "SUCCEEDED", tasks)
    print(summary.model_dump_json(indent=2) if args.json else render_summary(summary))


if __name__ == "__main__":
    raise SystemExit(main())
