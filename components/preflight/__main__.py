"""CLI: ``python -m components.preflight PARAMETERS.json``: check a run's pipeline parameters; print the route."""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

from components.common.errors import UserError, cli_main
from components.preflight.core import check_run_parameters


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(inspect.signature(check_run_parameters).parameters)
    parser = argparse.ArgumentParser(
        prog="python -m components.preflight",
        description="Check the parameters of a medgemma-grpo run before submitting it, as the run's first task does; "
        "prints where training runs (one-vm or custom-job).",
    )
    parser.add_argument("parameters", help=f"JSON file of the run's parameters (extra keys are ignored): {names}")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    path = Path(args.parameters)
    if not path.is_file():
        raise UserError(f"parameters: {args.parameters!r} not found")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"parameters: {path} is not valid JSON ({err.msg})") from None
    accepted = inspect.signature(check_run_parameters).parameters
    missing = [n for n, p in accepted.items() if p.default is inspect.Parameter.empty and n not in values]
    if missing:
        raise UserError(f"parameters: {path} lacks {', '.join(missing)}")
    print(check_run_parameters(**{name: value for name, value in values.items() if name in accepted}))


if __name__ == "__main__":
    raise SystemExit(main())
