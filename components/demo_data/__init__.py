"""A synthetic demo dataset in the original MedQA release layout, written by us (not real MedQA).

The answer follows a rule a tiny model can learn: each question names one fictional finding, and each
finding calls for one fictional remedy. The four remedies are always offered in the same order, so the rule
is "finding -> letter". Real MedQA is never bundled; see ``../shared/data/medqa`` for tests on real rows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from components.common.prompts import NOTEBOOK_PROMPT_TEMPLATE, render_user_message

REMEDIES = {"A": "Alverin", "B": "Borazol", "C": "Cetrafen", "D": "Dumexil"}
FINDING_TO_LETTER = {
    "silverosis": "A", "vitreonychia": "A",
    "violhidrosis": "B", "otohumia": "B",
    "genufrigia": "C", "amarolacria": "C",
    "iridostria": "D", "oxyhalitosis": "D",
}
CLINICS = ["Northgate", "Riverside", "Lakeview", "Hillcrest", "Seaside", "Maplewood"]
FILLERS = [
    "Vital signs are within normal limits.",
    "The patient reports mild fatigue for two weeks.",
    "The patient has no significant past medical history.",
    "Symptoms began after a long journey.",
    "Laboratory studies are unremarkable.",
    "There is no family history of similar findings.",
]
SPLIT_SIZES = {"train": 480, "dev": 80, "test": 240}
SPLIT_FILES = {split: f"{split}.jsonl" for split in SPLIT_SIZES}
DEMO_SEED = 20261126


def _question(rng: random.Random, finding: str) -> str:
    return (
        "SYNTHETIC DEMO ITEM (not real MedQA). "
        f"A {rng.randint(18, 80)}-year-old {rng.choice(['man', 'woman'])} visits the fictional "
        f"{rng.choice(CLINICS)} clinic. Examination shows {finding}. {rng.choice(FILLERS)} "
        "Which fictional remedy is indicated?"
    )


def generate_demo_rows(seed: int = DEMO_SEED) -> dict[str, list[dict]]:
    """Rows per split in the MedQA release layout; questions are unique across all splits (no leakage)."""
    rng = random.Random(seed)
    findings = sorted(FINDING_TO_LETTER)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in SPLIT_SIZES.items():
        rows = []
        while len(rows) < size:
            finding = findings[rng.randrange(len(findings))]
            question = _question(rng, finding)
            if question in seen:
                continue
            seen.add(question)
            letter = FINDING_TO_LETTER[finding]
            rows.append({
                "question": question,
                "options": dict(REMEDIES),
                "answer": REMEDIES[letter],
                "answer_idx": letter,
                "meta_info": rng.choice(["step1", "step2&3"]),
                "demo_id": f"demo-{split}-{len(rows):04d}",
            })
        splits[split] = rows
    return splits


def bundled_demo_dir() -> Path:
    """The folder of the bundled demo files (``train.jsonl``, ``dev.jsonl``, ``test.jsonl``)."""
    return Path(str(resources.files(__name__)))


def demo_corpus(seed: int = DEMO_SEED) -> Iterator[str]:
    """Text for training the tiny model's tokenizer: every rendered demo prompt plus the answer format."""
    for rows in generate_demo_rows(seed).values():
        for row in rows:
            yield render_user_message(row["question"], row["options"], NOTEBOOK_PROMPT_TEMPLATE)
    for letter in "ABCDE":
        yield f"<answer>{letter}</answer>"
