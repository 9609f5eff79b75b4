"""Generates the reference pages that must not drift from the code.

* ``reference/config.md``: every key of a ``vlmfast run`` config, from the section
  dataclasses of :mod:`vlmfast.pipeline.sections` (type, default, the field's docstring);
* ``reference/cli.md``: every command's ``--help``, from the argument parsers.

Run by ``docs/hooks.py`` before every ``mkdocs build`` (so ``make docs`` and ``mkdocs
serve`` always show the current code), and by ``tests/test_docs.py``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string right after each field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, [*body[1:], None], strict=True):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return docs


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "(required)"


def config_reference() -> str:
    """Markdown: one table per config section, one row per key."""
    from vlmfast.pipeline.config import PipelineConfig

    out = [
        "# Pipeline config reference",
        "",
        "Every key a `vlmfast run --config FILE` TOML file may hold, generated from the",
        "section dataclasses in `vlmfast/pipeline/sections.py` (so it cannot drift). A key",
        "that is not listed is an error naming it. See the [pipeline guide](../guides/pipeline.md).",
        "",
    ]
    for section in dataclasses.fields(PipelineConfig):
        cls = section.default_factory()  # type: ignore[operator]
        cls = type(cls)
        docs = field_docs(cls)
        out += [f"## `[{section.name}]`", "", inspect.cleandoc(cls.__doc__ or ""), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            tp = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            meaning = docs.get(f.name, "").replace("|", "\\|")
            default = _default(f).replace("|", "\\|")
            tp = str(tp).replace("|", "\\|")
            out.append(f"| `{f.name}` | `{tp}` | `{default}` | {meaning} |")
        out.append("")
    return "\n".join(out)


def cli_reference() -> str:
    """Markdown: ``vlmfast --help`` and every subcommand's ``--help``."""
    from vlmfast.cli import build_parser

    parser = build_parser()
    out = [
        "# Command-line reference",
        "",
        "Generated from the argument parsers (`vlmfast/cli/`), so it cannot drift.",
        "Every command shares one argument layer and one error path: a user's mistake",
        "prints one line naming the input and exits 1 (`vlmfast --debug CMD` shows the",
        "traceback).",
        "",
        "## `vlmfast`",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        out += [f"## `vlmfast {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def write_reference(docs_dir: Path) -> list[Path]:
    """Writes both pages under ``docs_dir/reference/``; returns their paths."""
    ref = docs_dir / "reference"
    ref.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("config.md", config_reference()), ("cli.md", cli_reference())):
        path = ref / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_reference(Path(__file__).parent):
        print(p)


PUBLIC_PACKAGES = (
    "vlmfast",
    "vlmfast.caching",
    "vlmfast.store",
    "vlmfast.sae",
    "vlmfast.stats",
    "vlmfast.scoring",
    "vlmfast.causal",
    "vlmfast.crossmodal",
    "vlmfast.data",
    "vlmfast.pipeline",
)
"""The packages whose ``__all__`` is the public API (``reference/api.md`` renders them)."""


def public_objects() -> list[tuple[str, Any]]:
    """Returns ``(dotted name, object)`` for every ``__all__`` name of ``PUBLIC_PACKAGES``
    (imported: this loads torch)."""
    import importlib
    import warnings

    out = []
    for pkg_name in PUBLIC_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for name in getattr(pkg, "__all__", []):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                out.append((f"{pkg_name}.{name}", getattr(pkg, name)))
    return out


def missing_docstrings() -> list[str]:
    """Public names (functions, classes) without a docstring of their own. What the
    docstrings say is checked by ``docstring_content.docstring_offenders``."""
    missing = []
    for qualname, obj in public_objects():
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)):
            continue  # constants are documented by their module
        doc = inspect.getdoc(obj) if not inspect.isclass(obj) else obj.__dict__.get("__doc__")
        auto = inspect.isclass(obj) and (doc or "").startswith(f"{obj.__name__}(")
        if not (doc or "").strip() or auto:
            missing.append(qualname)
    return missing
