"""Reward functions: pure ``(completions, **columns) -> list[float]``, picked by name from ``REWARDS``.

Both use :func:`components.common.answers.extract_answer`, the extraction the evaluator uses, with the
option letters of each row (``letters`` column), so 5-option data is scored with its own letters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from components.common.answers import completion_text, extract_answer

DEFAULT_LETTERS = ("A", "B", "C", "D")


def _row_letters(letters: Sequence[Sequence[str]] | None, index: int) -> Sequence[str]:
    return letters[index] if letters is not None else DEFAULT_LETTERS


def correctness_reward(completions: list, answer: list[str], letters: list[list[str]] | None = None, **_) -> list[float]:
    """1.0 when the completion's single valid answer letter equals the gold letter, else 0.0."""
    return [
        1.0 if extract_answer(completion_text(c), _row_letters(letters, i)) == gold else 0.0
        for i, (c, gold) in enumerate(zip(completions, answer, strict=True))
    ]


def format_reward(completions: list, letters: list[list[str]] | None = None, **_) -> list[float]:
    """1.0 when the completion holds exactly one valid answer (any of the row's letters), else 0.0."""
    return [
        1.0 if extract_answer(completion_text(c), _row_letters(letters, i)) is not None else 0.0
        for i, c in enumerate(completions)
    ]


REWARDS: dict[str, Callable[..., list[float]]] = {"correctness": correctness_reward, "format": format_reward}
