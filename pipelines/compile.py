"""python pipelines/compile.py [--target vertex|kfp] [--output PATH] [--base-image IMG] [--trainer-image IMG]:
write the pipeline YAML.

``--target vertex`` (the default) writes what Vertex AI Pipelines runs (``pipelines/submit.py``) and what the
template registry stores for reruns from the console. ``--target kfp`` writes the same pipeline for a self-hosted
Kubeflow Pipelines 2.x cluster (docs/kfp.md): GPUs as ``nvidia.com/gpu`` on nodes picked by a label, a persistent
volume claim for checkpoints and the registry, the token from a Kubernetes secret. Images and these settings are
chosen here, at compile time (Cloud Build passes the images it built).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components.common.errors import UserError, cli_main

DEFAULT_OUTPUT = "medgemma_grpo_pipeline.yaml"


def compile_pipeline(output: str | Path, base_image: str, trainer_image: str, target="vertex") -> Path:
    """Compile for ``target`` (a name or settings from pipelines/targets.py); its parameter defaults are checked
    against what the target can run before anything is written."""
    from kfp import compiler

    from pipelines.medgemma_grpo import Images, build_pipeline
    from pipelines.targets import check_defaults, target_settings

    settings = target_settings(target)
    pipeline = build_pipeline(Images(base=base_image, trainer=trainer_image), target=settings)
    overrides = settings.parameter_defaults()
    inputs = pipeline.component_spec.inputs or {}
    unknown = sorted(set(overrides) - set(inputs))
    if unknown:
        raise UserError(f"target {settings.name}: defaults for unknown pipeline parameters {', '.join(unknown)}")
    check_defaults(settings, {**{name: spec.default for name, spec in inputs.items()}, **overrides})
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, package_path=str(output), pipeline_parameters=overrides or None)
    return output


@cli_main
def main(argv: list[str] | None = None) -> None:
    from pipelines.medgemma_grpo import DEFAULT_IMAGES
    from pipelines.targets import (DEFAULT_GKE_GPU, DEFAULT_HF_TOKEN_KUBERNETES_SECRET, DEFAULT_VOLUME_CLAIM,
                                   GKE_ACCELERATOR_LABEL, TARGETS, KfpTarget)

    parser = argparse.ArgumentParser(prog="python pipelines/compile.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=[t for t in TARGETS if t != "local"], default="vertex",
                        help="vertex: Vertex AI Pipelines (default); kfp: a self-hosted Kubeflow Pipelines 2.x cluster")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"pipeline YAML to write (default {DEFAULT_OUTPUT})")
    parser.add_argument("--base-image", default=DEFAULT_IMAGES.base, help="slim image: data prep, compare, register")
    parser.add_argument("--trainer-image", default=DEFAULT_IMAGES.trainer, help="CUDA image: training, evaluation")
    kfp = parser.add_argument_group("--target kfp only (docs/kfp.md)")
    kfp.add_argument("--volume-claim", default=DEFAULT_VOLUME_CLAIM,
                     help=f"persistent volume claim for checkpoints and the registry (default {DEFAULT_VOLUME_CLAIM})")
    kfp.add_argument("--hf-token-kubernetes-secret", default=DEFAULT_HF_TOKEN_KUBERNETES_SECRET,
                     help="Kubernetes secret holding the Hugging Face token under the key HF_TOKEN "
                          f"(default {DEFAULT_HF_TOKEN_KUBERNETES_SECRET})")
    kfp.add_argument("--gpu-node-label", default=GKE_ACCELERATOR_LABEL,
                     help=f"node label that names the GPU type (default {GKE_ACCELERATOR_LABEL}; "
                          "e.g. nvidia.com/gpu.product with NVIDIA GPU feature discovery)")
    kfp.add_argument("--train-accelerator-type", default=DEFAULT_GKE_GPU,
                     help=f"that label's value on the training GPU nodes (default {DEFAULT_GKE_GPU})")
    kfp.add_argument("--model-parallelism", type=int, default=0,
                     help="models trained at once in a run with several models (default 0: all; 1 for a "
                          "ReadWriteOnce volume claim, which one pod at a time can mount)")
    kfp.add_argument("--eval-accelerator-type", default=DEFAULT_GKE_GPU,
                     help=f"that label's value on the evaluation GPU nodes (default {DEFAULT_GKE_GPU})")
    args = parser.parse_args(argv)
    target = args.target
    if target == "kfp":
        target = KfpTarget(volume_claim=args.volume_claim, hf_token_secret=args.hf_token_kubernetes_secret,
                           gpu_node_label=args.gpu_node_label, model_parallelism=args.model_parallelism,
                           gpu_types={"train_accelerator_type": args.train_accelerator_type,
                                      "eval_accelerator_type": args.eval_accelerator_type})
    path = compile_pipeline(args.output, args.base_image, args.trainer_image, target)
    print(f"pipeline for {args.target} written to {path}")


if __name__ == "__main__":
    raise SystemExit(main())
