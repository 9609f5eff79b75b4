"""The README is a front door, not a manual: at most 300 lines, and nothing in it stale.

Every ``make`` target and ``vlmfast`` command it names exists; its TOML blocks hold only
keys a run config has; its Python blocks (which need pretrained weights, so they are not
run here) compile, and every name they import from vlmfast exists. Paths and links are
checked for every file of the project by ``test_references.py``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README) if kind == lang]


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= 300


def test_make_targets_and_commands_exist() -> None:
    from vlmfast.cli import build_parser

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named = set(re.findall(r"\bmake ([\w-]+)", README))
    assert named and named <= targets, named - targets
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    commands = set(sub.choices)
    used = set(re.findall(r"\bvlmfast ([a-z][\w-]*)", "\n".join(_blocks("bash"))))
    listed = set(re.findall(r"[a-z][\w-]*", README.split("## Commands")[-1]))
    assert used and used <= commands, used - commands
    assert commands <= listed, f"commands missing from the README: {commands - listed}"


def test_toml_blocks_hold_real_config_keys() -> None:
    from vlmfast.pipeline.config import PipelineConfig

    sections = {f.name: f.default_factory() for f in dataclasses.fields(PipelineConfig)}  # type: ignore[misc]
    blocks = _blocks("toml")
    assert blocks
    for body in blocks:
        for section, keys in tomllib.loads(body).items():
            assert section in sections, section
            known = {f.name for f in dataclasses.fields(sections[section])}
            assert set(keys) <= known, (section, set(keys) - known)


def test_python_blocks_compile_and_name_real_things() -> None:
    blocks = _blocks("python")
    assert blocks
    for body in blocks:
        tree = ast.parse(body)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("vlmfast")
            ):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "vf"
            ):
                import vlmfast

                assert hasattr(vlmfast, node.attr), f"vf.{node.attr}"
