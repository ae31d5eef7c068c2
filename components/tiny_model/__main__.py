"""python -m components.tiny_model --output-dir DIR [--warm-start]: build the tiny offline Gemma 3 model."""

from __future__ import annotations

import argparse
import logging

from components.common.errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m components.tiny_model", description=__doc__)
    parser.add_argument("--output-dir", required=True, help="folder to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from components.tiny_model.core import build_tiny_model

    build_tiny_model(args.output_dir, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
