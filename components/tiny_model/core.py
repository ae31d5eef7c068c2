"""A tiny, random-init Gemma 3 checkpoint laid out like ``google/medgemma-4b-it``, built offline in seconds.

Same architecture class (``Gemma3ForConditionalGeneration``, text + SigLIP vision sub-configs), same special
tokens and chat template, same processor files; only the sizes differ. Every step loads it with the calls it
uses for the real model (``AutoModelForCausalLM`` / ``AutoProcessor``), so tests and the local run exercise
the production code path. The tokenizer is a byte-fallback BPE (as Gemma's) trained on the demo corpus.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# Gemma 3's chat template (as shipped with medgemma-4b-it): system text is folded into the first user turn.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}{{ raise_exception(\"Invalid content type\") }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)

# Gemma's special tokens, in Gemma's order for the first five ids.
BASE_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]
IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]

# Small enough to build and train on a laptop CPU in seconds; the vision tower is there for layout only.
TEXT_SIZES = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    query_pre_attn_scalar=32,
    max_position_embeddings=2048,
    sliding_window=512,
)
# The real 4B text tower (google/medgemma-4b-it, google/gemma-3-4b-it), for benchmarks that build it at random.
GEMMA3_4B_TEXT = dict(
    hidden_size=2560,
    intermediate_size=10240,
    num_hidden_layers=34,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    vocab_size=262_208,
    query_pre_attn_scalar=256,
    sliding_window=1024,
    max_position_embeddings=131_072,
    rope_scaling={"rope_type": "linear", "factor": 8.0},
)
VISION_SIZES = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
)
MM_TOKENS_PER_IMAGE = 4  # (28 / 14)^2 patches pooled to 2x2


def _train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A BPE with byte fallback and Gemma's space handling (``▁``), trained on ``corpus``."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    specials = BASE_SPECIAL_TOKENS + TURN_TOKENS + list(IMAGE_TOKENS.values()) + BYTE_TOKENS
    tokenizer = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next", invert=False)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    vocab = tokenizer.get_vocab()
    merges = [tuple(pair) for pair in json.loads(tokenizer.to_str())["model"]["merges"]]
    return vocab, merges


def build_tiny_model(output_dir: str | Path, *, corpus: Iterable[str] | None = None, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Write a tiny random-init MedGemma-layout checkpoint (model, tokenizer, processor) to ``output_dir``."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        GemmaTokenizer,
        GenerationConfig,
    )

    from components.demo_data import demo_corpus

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = _train_tokenizer(corpus if corpus is not None else demo_corpus(), vocab_size)
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens={**IMAGE_TOKENS},
        add_bos_token=True,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )
    tokenizer.add_special_tokens({"extra_special_tokens": TURN_TOKENS + list(IMAGE_TOKENS.values())})
    # The PIL image processor needs no torchvision (kept out of the CPU install).
    image_processor = Gemma3ImageProcessorPil(size={"height": VISION_SIZES["image_size"], "width": VISION_SIZES["image_size"]})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=MM_TOKENS_PER_IMAGE,
    )

    ids = tokenizer.convert_tokens_to_ids
    end_of_turn = ids("<end_of_turn>")
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), **TEXT_SIZES),
        vision_config=dict(model_type="siglip_vision_model", **VISION_SIZES),
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=ids(IMAGE_TOKENS["boi_token"]),
        eoi_token_index=ids(IMAGE_TOKENS["eoi_token"]),
        image_token_index=ids(IMAGE_TOKENS["image_token"]),
        pad_token_id=ids("<pad>"),
        bos_token_id=ids("<bos>"),
        eos_token_id=[ids("<eos>"), end_of_turn],
    )
    config.text_config.eos_token_id = [ids("<eos>"), end_of_turn]
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    # medgemma-4b-it ships bf16 weights; the tiny model stays fp32 because CPU training is its job.
    model.generation_config = GenerationConfig(
        bos_token_id=ids("<bos>"), pad_token_id=ids("<pad>"), eos_token_id=[ids("<eos>"), end_of_turn],
        do_sample=True, top_k=64, top_p=0.95,
    )
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    log.info("tiny Gemma 3 model written to %s (%.2fM parameters)", output_dir, model.num_parameters() / 1e6)
    return output_dir


def warm_start(model_dir: str | Path, *, steps: int = 150, batch_size: int = 32, learning_rate: float = 3e-3, seed: int = 0) -> None:
    """A brief supervised pass so the tiny model answers in the ``<answer>X</answer>`` format.

    The target restates the question's finding, then gives a letter drawn at random, independent of the
    question: the warm start teaches the format (a short reasoning line, then the answer) and nothing of
    the demo rule, so the baseline stays near chance and any gain is GRPO's.
    """
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    from components.common.prompts import render_prompt
    from components.demo_data import generate_demo_rows

    rng = random.Random(seed)
    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(model_dir)
    tokenizer = processor.tokenizer
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = generate_demo_rows()["train"]
    examples = []
    for row in rows:
        prompt_ids = tokenizer.apply_chat_template(render_prompt(row["question"], row["options"]),
                                                   add_generation_prompt=True, tokenize=True, return_dict=False)
        finding = row["question"].split("Examination shows ")[1].split(".")[0]
        target = f"Finding: {finding}. <answer>{rng.choice('ABCD')}</answer><end_of_turn>"
        target_ids = tokenizer(target, add_special_tokens=False).input_ids
        examples.append((list(prompt_ids), target_ids))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    for step in range(steps):
        batch = rng.sample(examples, batch_size)
        length = max(len(p) + len(t) for p, t in batch)
        input_ids = torch.full((batch_size, length), tokenizer.pad_token_id)
        labels = torch.full((batch_size, length), -100)
        attention = torch.zeros((batch_size, length), dtype=torch.long)
        for i, (prompt, target) in enumerate(batch):
            ids = prompt + target
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, len(prompt) : len(ids)] = torch.tensor(target)
            attention[i, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 20 == 0 or step == steps - 1:
            log.info("warm start step %d/%d loss %.3f", step + 1, steps, loss.item())
    model.save_pretrained(model_dir)
