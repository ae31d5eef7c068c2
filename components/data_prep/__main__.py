"""python -m components.data_prep --source SRC --output-dir OUT: MedQA -> the notebook's prompts, bad rows quarantined.

SRC is a Hugging Face dataset id (default: the notebook's), a local folder or a gs:// prefix holding one file per
split (train, dev or validation, test; .jsonl, .json, .parquet or .csv). The prompt template, token budget,
validation size and seed come from the recipe; the flags below override them.
"""

from __future__ import annotations

import argparse
import json
import logging

from components.common.errors import cli_main
from components.data_prep.core import LAYOUTS
from components.data_prep.sources import DEFAULT_HF_DATASET

DEFAULT_RECIPE = "medgemma-4b"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.data_prep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source",
        default=DEFAULT_HF_DATASET,
        help=f"dataset id, folder or gs:// prefix (default: {DEFAULT_HF_DATASET})",
    )
    parser.add_argument(
        "--output-dir", required=True, help="folder for train/validation/test.jsonl, rejected.jsonl, stats.json"
    )
    parser.add_argument(
        "--recipe", default=DEFAULT_RECIPE, help=f"recipe name or YAML path (default: {DEFAULT_RECIPE})"
    )
    parser.add_argument(
        "--model", help="model id or path whose tokenizer counts prompt tokens (default: the recipe's model)"
    )
    parser.add_argument(
        "--val-size", type=int, help="validation rows taken from the shuffled dev split (default: recipe, 100)"
    )
    parser.add_argument("--seed", type=int, help="seed of the dev shuffle (default: recipe, 42)")
    parser.add_argument("--max-prompt-tokens", type=int, help="prompt token budget (default: recipe, 512)")
    parser.add_argument(
        "--max-reject-rate",
        type=float,
        default=0.05,
        help="fail when a split rejects more than this fraction (default: 0.05)",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="hf (data.Question ...) or medqa (question, options, answer_idx); default: detect",
    )
    parser.add_argument(
        "--num-options", type=int, default=0, help="options per question; 0: the most common count in the data"
    )
    parser.add_argument(
        "--hf-token-secret", help="Secret Manager resource name of the Hugging Face token (else HF_TOKEN)"
    )
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from components.common.recipes import load_recipe
    from components.data_prep.core import prepare_medqa

    recipe = load_recipe(args.recipe)
    stats = prepare_medqa(
        args.source,
        args.output_dir,
        tokenizer=args.model or recipe.model.model_id,
        val_size=recipe.data.val_size if args.val_size is None else args.val_size,
        seed=recipe.data.seed if args.seed is None else args.seed,
        max_reject_rate=args.max_reject_rate,
        layout=args.layout,
        prompt_template=recipe.data.prompt_template,
        max_prompt_tokens=recipe.data.max_prompt_tokens if args.max_prompt_tokens is None else args.max_prompt_tokens,
        num_options=args.num_options,
        hf_token_secret=args.hf_token_secret,
    )
    print(json.dumps({"output_rows": stats["output_rows"], "rejected": stats["rejected"]["by_reason"]}))


if __name__ == "__main__":
    raise SystemExit(main())
