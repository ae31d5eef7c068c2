"""The answer extraction (shared by reward and eval) and the rewards: table-driven, adversarial cases included."""

from __future__ import annotations

import pytest

from components.common.answers import completion_text, extract_answer
from components.grpo_train.rewards import REWARDS, correctness_reward, format_reward

ABCD = ["A", "B", "C", "D"]

EXTRACTION_CASES = [
    # (completion, letters, expected letter or None)
    ("<answer>B</answer>", ABCD, "B"),
    ("Reasoning first. <answer>C</answer>", ABCD, "C"),
    ("<answer> d </answer>", ABCD, "D"),  # whitespace and case are ignored
    ("<answer>(A)</answer>", ABCD, "A"),  # one pair of parentheses is allowed
    ("<answer>\n( b )\n</answer> done", ABCD, "B"),
    ("<answer>E</answer>", ABCD, None),  # not an option of this row
    ("<answer>E</answer>", ["A", "B", "C", "D", "E"], "E"),  # ...but it is of a 5-option row
    ("<answer>A or B</answer>", ABCD, None),
    ("<answer>AB</answer>", ABCD, None),
    ("<answer>B.</answer>", ABCD, None),
    ("<answer>((B))</answer>", ABCD, None),
    ("<answer></answer>", ABCD, None),
    ("<answer>   </answer>", ABCD, None),
    ("<answer>A</answer><answer>B</answer>", ABCD, None),  # two answers
    ("<answer>A</answer> <answer>A</answer>", ABCD, None),  # even when they agree
    ("The answer is B.", ABCD, None),  # letter outside the tags
    ("B <answer></answer>", ABCD, None),
    ("</answer>B<answer>", ABCD, None),  # tags in the wrong order
    ("<answer>B", ABCD, None),  # unclosed
    ("B</answer>", ABCD, None),
    ("<ANSWER>B</ANSWER>", ABCD, None),  # tags are case-sensitive, as the prompt shows them
    ("", ABCD, None),
    ("<answer><answer>B</answer>", ABCD, None),
]


@pytest.mark.parametrize(("completion", "letters", "expected"), EXTRACTION_CASES)
def test_extract_answer(completion, letters, expected):
    assert extract_answer(completion, letters) == expected


def test_completion_text_accepts_trl_shapes():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "<answer>A</answer>"}]) == "<answer>A</answer>"
    assert completion_text([]) == ""


def test_correctness_reward_uses_each_rows_letters_and_gold():
    completions = [
        [{"role": "assistant", "content": "<answer>B</answer>"}],
        [{"role": "assistant", "content": "<answer>E</answer>"}],
        [{"role": "assistant", "content": "<answer>E</answer>"}],
        [{"role": "assistant", "content": "I think A or B"}],
    ]
    rewards = correctness_reward(completions, answer=["B", "E", "E", "A"], letters=[ABCD, ABCD + ["E"], ABCD, ABCD])
    assert rewards == [1.0, 1.0, 0.0, 0.0]


def test_format_reward_counts_any_valid_letter():
    rewards = format_reward(["<answer>C</answer>", "<answer>Z</answer>", "C"], letters=[ABCD] * 3)
    assert rewards == [1.0, 0.0, 0.0]


def test_rewards_ignore_extra_trl_columns_and_default_to_abcd():
    # TRL passes every dataset column plus trainer_state etc.; rewards must accept and ignore them.
    rewards = correctness_reward(["<answer>D</answer>"], answer=["D"], prompts=["p"], trainer_state=None, id=["x"])
    assert rewards == [1.0]


def test_rewards_refuse_mismatched_lengths():
    with pytest.raises(ValueError):
        correctness_reward(["<answer>A</answer>", "<answer>B</answer>"], answer=["A"])


def test_registry_names_match_recipe_weights():
    from dataclasses import fields

    from components.common.recipes import RewardSpec

    assert set(REWARDS) == {f.name for f in fields(RewardSpec)}
