"""Checks what the public docstrings say: what each name returns and what it raises.

The API reference (``reference/api.md``) is rendered by mkdocstrings from these
docstrings, so a reader learns a function's result and its errors only if the docstring
says them (issue #24). ``tests/test_docstring_content.py`` fails on any offender. The
names walked are those of :func:`gen_reference.public_objects` (every ``__all__`` name of
``PUBLIC_PACKAGES``) and the public methods and properties their classes define.

The rules:

* **Returns.** A public function or method whose return annotation is not ``None`` (nor
  ``NoReturn``/``Never``) has a Google-style ``Returns:`` or ``Yields:`` section, or a
  docstring whose first word is ``Return``, ``Returns``, ``Yield`` or ``Yields``. A
  property is exempt (its docstring describes the value it is), so is ``__init__``, and
  so is a function without a return annotation (mypy's ``disallow_untyped_defs`` already
  rules that out in the package). Units cannot be checked mechanically: a ``Returns:``
  section states them where the value has them (seconds, bytes, rows, logits, AUROC in
  [0, 1], a fraction in [0, 1], ...).
* **Raises.** Every exception class a public function or method raises *directly* (a
  ``raise Name(...)`` or ``raise Name`` statement in its own body, found in the AST; not
  in a nested function, not a bare re-raise, not a raise of a variable) is named in its
  docstring, by a ``Raises:`` section or in prose. A class's constructor (``__init__``
  and a dataclass's ``__post_init__``) may name it in the class docstring or in
  ``__init__``'s. Errors raised by the functions it calls are not traced.
* **Rendering.** A ``Returns:``/``Yields:`` item reads as written in the rendered
  reference (:func:`misread_returns`): griffe takes ``word:`` at its start for a name,
  so it must not open with ``:class:`` or ``The :class:``, and its continuation lines are
  indented twice (one indent starts another returned value).

Only code in the ``vlmfast`` package's files is read (a generated or inherited method is not).
"""

from __future__ import annotations

import ast
import builtins
import functools
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@functools.cache
def package_dir() -> Path:
    """Returns the folder of the imported ``vlmfast`` package: only functions defined in
    files under it are checked."""
    import vlmfast

    return Path(vlmfast.__file__).resolve().parent


_RETURNS_SECTION = re.compile(r"^\s*(Returns|Yields):\s*$", re.MULTILINE)
_RETURNS_FIRST_WORD = re.compile(r"^(Returns?|Yields?)\b")
_NO_VALUE = frozenset({"None", "NoReturn", "Never", "typing.NoReturn", "typing.Never"})
_CONSTRUCTOR = ("__init__", "__post_init__")
_MISREAD_ITEM = re.compile(r"^(:|\w+\s+:)")
_EXCEPTION_NAME = re.compile(r"^[A-Z]\w*(Error|Exception|Warning|Exit|Interrupt)$")


def says_what_it_returns(doc: str) -> bool:
    """Returns whether ``doc`` has a ``Returns:``/``Yields:`` section or opens with
    ``Return``/``Returns``/``Yield``/``Yields`` (see the module docstring)."""
    doc = inspect.cleandoc(doc or "")
    return bool(_RETURNS_SECTION.search(doc) or _RETURNS_FIRST_WORD.match(doc))


def misread_returns(doc: str) -> list[str]:
    """Returns the ``Returns:``/``Yields:`` item lines of ``doc`` that mkdocstrings (griffe's
    Google parser) would not render as written: a first line opening with a colon
    (``:class:`X` ...``, whose colon griffe takes as a name separator) or with a word and a
    spaced colon (``The :class:`X```), and a continuation line indented like the item
    (griffe starts a new returned value there; indent continuations twice)."""
    lines = inspect.cleandoc(doc or "").split("\n")
    bad = []
    for i, line in enumerate(lines):
        if line.strip() not in ("Returns:", "Yields:"):
            continue
        items = [ln for ln in lines[i + 1 :] if ln.strip()]
        base = len(line) - len(line.lstrip())
        if not items or len(items[0]) - len(items[0].lstrip()) <= base:
            continue
        indent = len(items[0]) - len(items[0].lstrip())
        if _MISREAD_ITEM.match(items[0].strip()):
            bad.append(items[0].strip())
        for ln in items[1:]:
            depth = len(ln) - len(ln.lstrip())
            if depth <= base:
                break
            if depth == indent:
                bad.append(ln.strip())
    return bad


def names_exception(doc: str, exception: str) -> bool:
    """Returns whether ``doc`` names the class ``exception`` (as a whole word)."""
    return re.search(rf"(?<![\w.]){re.escape(exception)}\b", doc or "") is not None


def returns_a_value(func: Callable[..., Any]) -> bool:
    """Returns whether ``func``'s return annotation is present and is not ``None``
    (``NoReturn``, ``Never``)."""
    annotation = getattr(func, "__annotations__", {}).get("return", inspect.Signature.empty)
    if annotation is inspect.Signature.empty:
        return False
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return annotation is not None and text not in _NO_VALUE


@functools.cache
def _module_tree(path: str) -> ast.Module:
    return ast.parse(Path(path).read_text(), filename=path)


def _def_node(func: Callable[..., Any]) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The ``def`` of ``func`` in its file's AST (matched by the code's first line, which
    is the first decorator's line for a decorated function)."""
    code = func.__code__
    first = code.co_firstlineno
    for node in ast.walk(_module_tree(code.co_filename)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == code.co_name:
            lines = [node.lineno, *(d.lineno for d in node.decorator_list)]
            if first in lines:
                return node
    return None


def _own_statements(node: ast.AST) -> Iterator[ast.AST]:
    """Every node in ``node``'s body, not descending into nested functions or classes."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        yield child
        yield from _own_statements(child)


def _exception_name(exc: ast.expr, namespace: dict[str, Any]) -> str | None:
    """The class name ``raise exc`` raises, or None when ``exc`` is not a class expression
    (a variable holding an exception instance, say)."""
    if isinstance(exc, ast.Call):
        exc = exc.func
    if isinstance(exc, ast.Attribute):
        # ``errors.InputError``: a dotted capitalised name is an exception class.
        return exc.attr if exc.attr[:1].isupper() else None
    if not isinstance(exc, ast.Name):
        return None
    value = namespace.get(exc.id, getattr(builtins, exc.id, None))
    if value is None:  # imported inside the function: judge by the name
        return exc.id if _EXCEPTION_NAME.match(exc.id) else None
    if inspect.isclass(value) and issubclass(value, BaseException):
        return exc.id
    return None


def raised_exceptions(func: Callable[..., Any]) -> list[str]:
    """Returns the names of the exception classes ``func`` raises in its own body, sorted
    (empty when its source is not found)."""
    node = _def_node(func)
    if node is None:
        return []
    names = set()
    for child in _own_statements(node):
        if isinstance(child, ast.Raise) and child.exc is not None:
            name = _exception_name(child.exc, func.__globals__)
            if name is not None:
                names.add(name)
    return sorted(names)


def _is_ours(func: Any) -> bool:
    code = getattr(func, "__code__", None)
    return code is not None and Path(code.co_filename).resolve().is_relative_to(package_dir())


def _where(func: Callable[..., Any]) -> str:
    code = func.__code__
    return f"{Path(code.co_filename).resolve().relative_to(package_dir().parent)}:{code.co_firstlineno}"


def function_offenders(
    qualname: str, func: Callable[..., Any], *, is_property: bool = False, extra_doc: str = ""
) -> list[str]:
    """Returns one line per rule ``func`` breaks (empty when none): its return value not
    described, an exception it raises not named. ``extra_doc`` is text that also counts
    for the raises rule (a constructor's class docstring)."""
    func = inspect.unwrap(func)
    if not _is_ours(func):
        return []
    doc = func.__doc__ or ""
    out = []
    name = func.__name__
    exempt = is_property or name in _CONSTRUCTOR or not returns_a_value(func)
    if not exempt and not says_what_it_returns(doc):
        out.append(f"{qualname} ({_where(func)}): says nothing of what it returns")
    for line in misread_returns(doc):
        out.append(f"{qualname} ({_where(func)}): Returns item rendered wrongly: {line[:50]!r}")
    for exc in raised_exceptions(func):
        if not names_exception(doc + "\n" + extra_doc, exc):
            out.append(f"{qualname} ({_where(func)}): raises {exc}, not named in its docstring")
    return out


def _members(cls: type) -> Iterator[tuple[str, Any, bool]]:
    """``(name, function, is_property)`` for the public methods and properties ``cls``
    defines itself, and its constructor."""
    for name, attr in vars(cls).items():
        if name.startswith("_") and name not in _CONSTRUCTOR:
            continue
        if isinstance(attr, staticmethod | classmethod):
            yield name, attr.__func__, False
        elif isinstance(attr, property) and attr.fget is not None:
            yield name, attr.fget, True
        elif isinstance(attr, functools.cached_property):
            yield name, attr.func, True
        elif inspect.isfunction(attr):
            yield name, attr, False


def class_offenders(qualname: str, cls: type) -> list[str]:
    """Returns the offenders among ``cls``'s public methods, properties and constructor."""
    if issubclass(cls, BaseException):
        return []
    init_doc = getattr(vars(cls).get("__init__"), "__doc__", None) or ""
    class_doc = (vars(cls).get("__doc__") or "") + "\n" + init_doc
    out = []
    for name, func, is_property in _members(cls):
        extra = class_doc if name in _CONSTRUCTOR else ""
        out += function_offenders(
            f"{qualname}.{name}", func, is_property=is_property, extra_doc=extra
        )
    return out


def docstring_offenders() -> list[str]:
    """Returns one line per public function, method or constructor whose docstring does
    not say what it returns or does not name an exception it raises (see the module
    docstring for the rules); empty when every public docstring does."""
    from gen_reference import public_objects

    out: list[str] = []
    seen: set[int] = set()
    for qualname, obj in public_objects():
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if inspect.isclass(obj):
            out += class_offenders(qualname, obj)
        elif inspect.isfunction(obj):
            out += function_offenders(qualname, obj)
    return out


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    found = docstring_offenders()
    print("\n".join(found))
    print(f"{len(found)} offenders")
