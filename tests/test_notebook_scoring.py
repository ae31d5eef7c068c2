"""The notebook's answer extraction, reported next to ours: our port agrees with the notebook's function."""

from __future__ import annotations

import pytest

from components.common.answers import extract_answer, notebook_extract_answer


# Transcribed verbatim from the reference notebook (its evaluation cells): the reference for our port.
def extract_xml_answer(text: str) -> str:
    answer = text.split("<answer>")[-1]
    answer = answer.split("</answer>")[0]
    return answer.strip()


ABCD = ["A", "B", "C", "D"]

# (completion, gold, correct for the notebook, correct for the strict rule)
SCORING_CASES = [
    ("<answer>B</answer>", "B", True, True),
    ("Reasoning first. <answer>C</answer>", "C", True, True),
    ("B", "B", True, False),  # a bare letter counts for the notebook only
    ("  B\n", "B", True, False),
    ("<answer>A</answer><answer>B</answer>", "B", True, False),  # two answers: the notebook takes the last
    ("<answer>A</answer><answer>B</answer>", "A", False, False),
    ("<answer><answer>B</answer>", "B", True, False),
    ("The answer is B.", "B", False, False),  # no tags: the whole completion
    ("<answer>(B)</answer>", "B", False, True),
    ("<answer>b</answer>", "B", False, True),  # case-sensitive for the notebook
    ("<answer>B.</answer>", "B", False, False),
    ("<answer>B", "B", True, False),  # unclosed
    ("B</answer>", "B", True, False),
    ("</answer>B<answer>", "B", False, False),
    ("<answer></answer>", "B", False, False),
    ("", "B", False, False),
    ("<ANSWER>B</ANSWER>", "B", False, False),
    ("<answer> B </answer> trailing text", "B", True, True),
]


@pytest.mark.parametrize(("completion", "gold", "notebook_correct", "strict_correct"), SCORING_CASES)
def test_notebook_rule_agrees_with_the_notebook_and_differs_from_ours(completion, gold, notebook_correct,
                                                                      strict_correct):
    assert notebook_extract_answer(completion) == extract_xml_answer(completion)
    assert (notebook_extract_answer(completion) == gold) is notebook_correct
    assert (extract_answer(completion, ABCD) == gold) is strict_correct


@pytest.mark.parametrize("completion", [
    "<answer>A</answer> then <answer> C </answer> and </answer> more", "x<answer>\n\n</answer>", "<answer>",
    "</answer>", "</answer></answer>B", "<answer>B</answer>\n<answer>", "a <answer>é</answer>",
])
def test_notebook_rule_returns_what_the_notebook_returns(completion):
    assert notebook_extract_answer(completion) == extract_xml_answer(completion)
