"""Answer extraction shared by the training reward and the evaluator.

Rule (strict, documented in the README):
- the completion holds exactly one ``<answer>`` and exactly one ``</answer>``, in that order;
- the text between them, with surrounding whitespace removed and at most one pair of enclosing
  parentheses removed (``(B)``), is exactly one letter; case is ignored (``b`` counts as ``B``);
- that letter is one of the row's option letters.
Anything else (no tags, two answers, ``A or B``, ``B.``, empty tags, a letter only outside the tags)
extracts nothing. Text outside the tags (reasoning) is allowed.

:func:`notebook_extract_answer` is the reference notebook's looser rule, kept only to report its score.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

OPEN_TAG = "<answer>"
CLOSE_TAG = "</answer>"
_WRAPPED = re.compile(r"^\((.*)\)$", re.DOTALL)


def extract_answer(completion: str, letters: Sequence[str]) -> str | None:
    """The answer letter in ``completion``, or ``None`` when it holds no single valid answer."""
    if completion.count(OPEN_TAG) != 1 or completion.count(CLOSE_TAG) != 1:
        return None
    start = completion.index(OPEN_TAG) + len(OPEN_TAG)
    end = completion.index(CLOSE_TAG)
    if end < start:
        return None
    content = completion[start:end].strip()
    wrapped = _WRAPPED.match(content)
    if wrapped:
        content = wrapped.group(1).strip()
    if len(content) != 1:
        return None
    letter = content.upper()
    return letter if letter in letters else None


def notebook_extract_answer(completion: str) -> str:
    """The notebook's rule, for comparison with its published table only; never a reward.

    The text after the last ``<answer>`` (the whole completion when there is none), cut at the first
    ``</answer>`` after it, stripped; a prediction is correct for the notebook when this equals the gold
    letter exactly (case-sensitive), so a bare ``B`` counts and ``(B)`` or ``b`` do not.
    """
    after_last_open = completion.rpartition(OPEN_TAG)[2]
    return after_last_open.partition(CLOSE_TAG)[0].strip()


def completion_text(completion: object) -> str:
    """Text of a completion as TRL passes it: a string, or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return ""
