"""python pipelines/compile.py [--output PATH] [--base-image IMG] [--trainer-image IMG]: write the pipeline YAML.

The YAML is what Vertex AI Pipelines runs (``pipelines/submit.py``) and what the template registry stores
for reruns from the console. Images are chosen here, at compile time (Cloud Build passes the ones it built).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components.common.errors import cli_main

DEFAULT_OUTPUT = "medgemma_grpo_pipeline.yaml"


def compile_pipeline(output: str | Path, base_image: str, trainer_image: str) -> Path:
    from kfp import compiler

    from pipelines.medgemma_grpo import Images, build_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(Images(base=base_image, trainer=trainer_image)), package_path=str(output))
    return output


@cli_main
def main(argv: list[str] | None = None) -> None:
    from pipelines.medgemma_grpo import DEFAULT_IMAGES

    parser = argparse.ArgumentParser(prog="python pipelines/compile.py", description=__doc__)
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"pipeline YAML to write (default {DEFAULT_OUTPUT})")
    parser.add_argument("--base-image", default=DEFAULT_IMAGES.base, help="slim image: data prep, compare, register")
    parser.add_argument("--trainer-image", default=DEFAULT_IMAGES.trainer, help="CUDA image: training, evaluation")
    args = parser.parse_args(argv)
    path = compile_pipeline(args.output, args.base_image, args.trainer_image)
    print(f"pipeline written to {path}")


if __name__ == "__main__":
    raise SystemExit(main())
