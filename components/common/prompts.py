"""The prompt: the original notebook's user message, character for character, and its rendering."""

from __future__ import annotations

from collections.abc import Mapping

# The notebook's `big_prompt` (an f-string with no fields, so the text is literal). Recipes may replace it;
# a template must contain both placeholders.
NOTEBOOK_PROMPT_TEMPLATE = (
    "Answer the given question. Think step by step.\n"
    "You can directly provide the answer (A single letter) inside <answer> and </answer> "
    "(e.g. <answer>A</answer>), without further additions.\n"
    "Question: [QUESTION]\n"
    "[OPTIONS]\n"
)
QUESTION_PLACEHOLDER = "[QUESTION]"
OPTIONS_PLACEHOLDER = "[OPTIONS]"


def render_options(options: Mapping[str, str]) -> str:
    """``(A) text (B) text ...`` in the order the data gives, as the notebook renders four options."""
    return " ".join(f"({letter}) {text}" for letter, text in options.items())


def render_user_message(question: str, options: Mapping[str, str], template: str = NOTEBOOK_PROMPT_TEMPLATE) -> str:
    # Same replacement order as the notebook: question first, then options.
    return template.replace(QUESTION_PLACEHOLDER, question).replace(OPTIONS_PLACEHOLDER, render_options(options))


def render_prompt(
    question: str, options: Mapping[str, str], template: str = NOTEBOOK_PROMPT_TEMPLATE
) -> list[dict[str, str]]:
    """The conversational prompt TRL and the evaluator consume: one user message."""
    return [{"role": "user", "content": render_user_message(question, options, template)}]


def validate_template(template: str) -> None:
    from components.common.errors import UserError

    missing = [p for p in (QUESTION_PLACEHOLDER, OPTIONS_PLACEHOLDER) if p not in template]
    if missing:
        raise UserError(f"prompt template is missing placeholder(s) {', '.join(missing)}")
