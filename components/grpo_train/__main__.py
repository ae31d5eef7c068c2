"""python -m components.grpo_train: GRPO + LoRA training of a base model on prepared MedQA rows.

Either flags (the job is built from them once) or ``--job JOB.json``, a job file: what each process that
torchrun starts reads (see components.grpo_train.launch).
"""

from __future__ import annotations

import argparse
import logging

from components.common.errors import UserError, cli_main
from components.grpo_train.job import ROLLOUTS, TrainingJob

JOB_FLAGS = ("recipe", "data_dir", "output_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m components.grpo_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", help="a training job file (JSON, as --write-job writes it); no other flag then")
    parser.add_argument("--recipe", help="recipe name (e.g. medgemma-4b, tiny-cpu) or YAML path")
    parser.add_argument("--data-dir", help="data prep output (train.jsonl, validation.jsonl)")
    parser.add_argument("--output-dir", help="adapter, checkpoints (resumed from), tensorboard")
    parser.add_argument("--model", help="base model id or path (default: the recipe's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a recipe field, e.g. --set train.max_steps=20 (repeatable)")
    parser.add_argument("--merge", action="store_true", help="also write merged bf16 weights for serving")
    parser.add_argument("--hf-token-secret", default="",
                        help="Secret Manager resource name of the Hugging Face token (else $HF_TOKEN)")
    parser.add_argument("--completion-sample-size", type=int, default=0,
                        help="write the first N completions to completions_sample.jsonl (off by default)")
    parser.add_argument("--rollout", default="auto", choices=ROLLOUTS,
                        help="completions without vLLM: our CUDA-graph generator, TRL's generate, or auto (the first "
                             "on a GPU, the second on CPU)")
    parser.add_argument("--tensorboard-dir", default="",
                        help="TensorBoard event folder when the recipe reports to tensorboard (default: "
                             "OUTPUT_DIR/tensorboard)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    parser.add_argument("--write-job", metavar="PATH", help="write the job file and exit (nothing is trained)")
    return parser


def job_from_args(args: argparse.Namespace) -> TrainingJob:
    """The job a command line asks for: read from ``--job``, or built once from the flags."""
    if args.job:
        if any(getattr(args, name) for name in JOB_FLAGS) or args.overrides or args.model:
            raise UserError("--job carries every setting: give no --recipe, --data-dir, --output-dir, --model or --set")
        return TrainingJob.read(args.job)
    missing = [f"--{name.replace('_', '-')}" for name in JOB_FLAGS if not getattr(args, name)]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (or give a job file with --job)")
    return TrainingJob.build(
        args.recipe, args.data_dir, args.output_dir, overrides=args.overrides, model=args.model, merge=args.merge,
        hf_token_secret=args.hf_token_secret, completion_sample_size=args.completion_sample_size,
        rollout=args.rollout, tensorboard_dir=args.tensorboard_dir, show_progress=not args.no_progress,
    )


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    job = job_from_args(args)
    if args.write_job:
        print(f"training job: {job.write(args.write_job)}")
        return

    from components.grpo_train.core import train_grpo
    from components.grpo_train.launch import job_of_this_rank, process_rank

    # Under torchrun (several GPUs) every rank runs this; rank 0 alone logs progress and writes the outputs.
    main_process = process_rank() == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with job_of_this_rank(job) as this_rank:
        outcome = train_grpo(this_rank)
    if main_process:
        print(f"adapter: {outcome.adapter_dir} (step {outcome.global_step}, backend {outcome.backend})")


if __name__ == "__main__":
    raise SystemExit(main())
