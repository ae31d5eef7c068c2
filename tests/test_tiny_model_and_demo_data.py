"""The tiny offline model mirrors medgemma-4b-it's layout; the bundled demo data is ours, reproducible, leak-free."""

from __future__ import annotations

import json
from pathlib import Path

from components.common.jsonl import read_jsonl
from components.demo_data import FINDING_TO_LETTER, REMEDIES, SPLIT_FILES, bundled_demo_dir, generate_demo_rows


def test_tiny_model_has_medgemma_layout(tiny_model_dir):
    folder = Path(tiny_model_dir)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert config["model_type"] == "gemma3"
    assert config["text_config"]["model_type"] == "gemma3_text"
    assert config["vision_config"]["model_type"] == "siglip_vision_model"


def test_tiny_model_loads_with_the_production_calls(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(processor).__name__ == "Gemma3Processor"
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    tokenizer = processor.tokenizer
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>" and tokenizer.bos_token == "<bos>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    text = processor.apply_chat_template([{"role": "user", "content": " Hi "}], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    # Byte fallback: any text (real MedQA, accents, symbols) round-trips.
    sample = "Patient, 45 y/o, Na⁺ 130 mEq/L — café-au-lait spots."
    assert tokenizer.decode(tokenizer(sample, add_special_tokens=False).input_ids) == sample
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]


def test_tiny_model_cli(tmp_path):
    from components.tiny_model.__main__ import main

    assert main(["--output-dir", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "config.json").is_file()


def test_bundled_demo_files_are_the_generated_ones():
    generated = generate_demo_rows()
    for split, rows in generated.items():
        assert read_jsonl(bundled_demo_dir() / SPLIT_FILES[split]) == rows


def test_demo_data_is_synthetic_in_medqa_layout_and_follows_its_rule():
    rows = [row for split in generate_demo_rows().values() for row in split]
    for row in rows:
        assert row["question"].startswith("SYNTHETIC DEMO ITEM (not real MedQA).")
        assert row["options"] == REMEDIES and row["answer"] == REMEDIES[row["answer_idx"]]
        findings = [f for f in FINDING_TO_LETTER if f in row["question"]]
        assert len(findings) == 1 and FINDING_TO_LETTER[findings[0]] == row["answer_idx"]
    letters = {row["answer_idx"] for row in rows}
    assert letters == set(REMEDIES)


def test_demo_questions_never_repeat_across_splits():
    questions = [row["question"] for split in generate_demo_rows().values() for row in split]
    assert len(questions) == len(set(questions))
