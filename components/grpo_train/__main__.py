"""python -m components.grpo_train: GRPO + LoRA training of a base model on prepared MedQA rows."""

from __future__ import annotations

import argparse
import logging

from components.common.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments (also what the multi-GPU launcher builds: see components.grpo_train.launch)."""
    from components.grpo_train.core import ROLLOUTS

    parser = argparse.ArgumentParser(prog="python -m components.grpo_train", description=__doc__)
    parser.add_argument("--recipe", required=True, help="recipe name (e.g. medgemma-4b, tiny-cpu) or YAML path")
    parser.add_argument("--data-dir", required=True, help="data prep output (train.jsonl, validation.jsonl)")
    parser.add_argument("--output-dir", required=True, help="adapter, checkpoints (resumed from), tensorboard")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    from components.common.secrets import resolve_hf_token
    from components.grpo_train.core import train_grpo
    from components.grpo_train.launch import outputs_of_this_rank, process_rank

    # Under torchrun (several GPUs) every rank runs this; rank 0 alone logs progress and writes the outputs.
    main_process = process_rank() == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with outputs_of_this_rank(args.output_dir) as output_dir:
        outcome = train_grpo(
            args.recipe, args.data_dir, output_dir, model=args.model, overrides=args.overrides,
            merge=args.merge and main_process, token=resolve_hf_token(args.hf_token_secret or None),
            completion_sample_size=args.completion_sample_size, show_progress=not args.no_progress and main_process,
            rollout=args.rollout,
        )
    if main_process:
        print(f"adapter: {outcome.adapter_dir} (step {outcome.global_step}, backend {outcome.backend})")


if __name__ == "__main__":
    raise SystemExit(main())
