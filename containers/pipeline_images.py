"""Check that a compiled pipeline runs exactly the given container images (Cloud Build runs this after compile).

    python containers/pipeline_images.py pipeline.yaml --expect IMAGE --expect IMAGE

Exits 2 with one line naming the difference when an executor uses another image or an expected image is
unused; prints the images otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from components.common.errors import UserError, cli_main


def images_in_spec(path: str | Path) -> dict[str, str]:
    """``{executor label: image}`` for every container executor of a compiled KFP pipeline YAML."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (compile the pipeline first)")
    documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    # A compiled file is the PipelineSpec, optionally followed by a platform spec (resources, etc.).
    spec = documents[0] if documents else {}
    executors = (spec.get("deploymentSpec") or {}).get("executors") or {}
    images = {
        label: executor["container"]["image"]
        for label, executor in executors.items()
        if "container" in executor and "image" in executor["container"]
    }
    if not images:
        raise UserError(f"{path}: no container executors found; is it a compiled KFP pipeline?")
    return images


def check_images(path: str | Path, expected: list[str]) -> dict[str, str]:
    """Raise ``UserError`` unless the executors use all of ``expected`` and nothing else."""
    images = images_in_spec(path)
    foreign = sorted({f"{label}={image}" for label, image in images.items() if image not in expected})
    if foreign:
        raise UserError(f"{path}: executors use images that were not just built: {', '.join(foreign)}")
    unused = sorted(set(expected) - set(images.values()))
    if unused:
        raise UserError(f"{path}: no executor uses {', '.join(unused)}")
    return images


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python containers/pipeline_images.py", description=__doc__.split("\n")[0])
    parser.add_argument("pipeline", help="compiled pipeline YAML")
    parser.add_argument("--expect", action="append", required=True, help="an image the pipeline must use")
    args = parser.parse_args(argv)
    for label, image in sorted(check_images(args.pipeline, args.expect).items()):
        print(f"{label}: {image}")


if __name__ == "__main__":
    sys.exit(main())
