"""User-facing errors: one line, names the bad thing, lists valid choices."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterable, Iterator


class UserError(Exception):
    """Bad input from the user (parameter, file, row). CLIs print it in one line and exit 2."""


def choices_error(kind: str, value: object, valid: Iterable[object]) -> UserError:
    """An error for an unknown ``kind`` that lists the valid choices."""
    listed = ", ".join(sorted(str(v) for v in valid))
    return UserError(f"unknown {kind} {value!r}; valid choices: {listed}")


def cli_main(func: Callable[[list[str] | None], object]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI ``main(argv)``: a ``UserError`` becomes one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            func(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0

    return wrapper


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For KFP components: a ``UserError`` becomes one line on stderr and exit code 2, not a traceback."""
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
