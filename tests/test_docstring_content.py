"""Every public docstring says what its function returns and names what it raises
(issue #24; the rules are in ``docs/docstring_content.py``), and the checker itself
flags what it should on small functions defined here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))

import docstring_content as dc

from vlmfast.errors import InputError


def test_every_public_docstring_says_what_it_returns_and_raises() -> None:
    offenders = dc.docstring_offenders()
    assert offenders == [], f"{len(offenders)} offenders:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    ("doc", "ok"),
    [
        ("Returns the rows.", True),
        ("Return the rows.", True),
        ("Yields one batch per step.", True),
        ("Train it.\n\nReturns:\n    The log.", True),
        ("Walk it.\n\nYields:\n    Batches.", True),
        ("The rows of the store.", False),
        ("Train it; returns the log.", False),
        ("Returnable things.", False),
        ("", False),
    ],
)
def test_says_what_it_returns(doc: str, ok: bool) -> None:
    assert dc.says_what_it_returns(doc) is ok


def test_misread_returns_items() -> None:
    good = "Runs it.\n\nReturns:\n    The log, one line per step;\n        in seconds.\n"
    assert dc.misread_returns(good) == []
    assert dc.misread_returns("Runs.\n\nReturns:\n    :class:`Log`: the log.") == [
        ":class:`Log`: the log."
    ]
    assert dc.misread_returns("Runs.\n\nReturns:\n    The :class:`Log`.") == ["The :class:`Log`."]
    split = "Runs.\n\nReturns:\n    The log,\n    one line per step.\n\nRaises:\n    E: x."
    assert dc.misread_returns(split) == ["one line per step."]


def test_names_exception_is_a_whole_word() -> None:
    assert dc.names_exception("Raises:\n    InputError: bad k.", "InputError")
    assert not dc.names_exception("raises an InputErrors", "InputError")
    assert not dc.names_exception("a MyInputError", "InputError")


def _raises_directly(x: int) -> int:
    """Returns ``x``."""
    if x < 0:
        raise InputError(f"x={x} is negative")
    if x == 0:
        raise ValueError

    def nested() -> None:
        raise KeyError(x)  # a nested function's raise is its own

    err = RuntimeError("kept")
    if x == 1:
        raise err  # a variable: not a class expression
    try:
        return 1 // (x - 2)
    except ZeroDivisionError:
        raise  # a re-raise


def _documented(x: int) -> int:
    """Returns ``x``.

    Raises:
        InputError: ``x`` is negative.
        ValueError: ``x`` is 0.
    """
    return _raises_directly(x)


def _silent(x: int) -> int:
    """The value ``x``."""
    return x


def _no_value(x: int) -> None:
    """Checks ``x``."""


def _imports_its_error(x: int) -> None:
    """Checks ``x``."""
    from vlmfast.errors import StoreError

    if x:
        raise StoreError(str(x))


def test_raised_exceptions_are_the_direct_class_raises() -> None:
    assert dc.raised_exceptions(_raises_directly) == ["InputError", "ValueError"]
    assert dc.raised_exceptions(_imports_its_error) == ["StoreError"]
    assert dc.raised_exceptions(_silent) == []


def test_function_offenders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dc, "_is_ours", lambda func: True)
    monkeypatch.setattr(dc, "_where", lambda func: "here")
    found = dc.function_offenders("f", _raises_directly)
    assert found == [
        "f (here): raises InputError, not named in its docstring",
        "f (here): raises ValueError, not named in its docstring",
    ]
    assert dc.function_offenders("g", _silent) == ["g (here): says nothing of what it returns"]
    assert dc.function_offenders("g", _silent, is_property=True) == []
    assert dc.function_offenders("h", _no_value) == []
    assert dc.function_offenders("d", _documented) == []
    # A constructor's raises may be named by the class docstring (``extra_doc``).
    assert len(dc.function_offenders("f", _raises_directly, extra_doc="InputError")) == 1


class _Thing:
    """A thing; ``_Thing(-1)`` raises InputError."""

    def __init__(self, x: int) -> None:
        if x < 0:
            raise InputError("negative")
        self.x = x

    @property
    def size(self) -> int:
        """The size, in bytes."""
        return self.x

    @staticmethod
    def make() -> _Thing:
        """A new thing."""
        return _Thing(0)

    def _private(self) -> int:
        return 0


def test_class_offenders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dc, "_is_ours", lambda func: True)
    monkeypatch.setattr(dc, "_where", lambda func: "here")
    assert dc.class_offenders("T", _Thing) == ["T.make (here): says nothing of what it returns"]
