"""Every command, fed a bad model, hook, data spec, output path or number: one clear line
naming the bad input, exit code 1, no traceback, nothing left behind.

The errors come from the shared argument types (``vlmfast.cli.args``) while the command
line is parsed, before any model is loaded, except where only the model can tell (an
unknown hook of a real model, a pipeline stage's hook): those load ``synthetic:tiny``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vlmfast.cli import main

TINY = "synthetic:tiny"
DATA = "synthetic:n=4,seed=0"

# command -> its good arguments ({out}, {missing}, {dir} are filled in per test)
BASE: dict[str, list[str]] = {
    "cache": ["--model", TINY, "--data", DATA, "--hooks", "image.blocks.0.resid_post",
              "--out", "{out}", "--no-progress"],
    "score": ["--store", "{missing}", "--hook", "image.blocks.0.resid_post", "--out", "{out}",
              "--no-progress"],
    "trace": ["--model", TINY, "--data", DATA, "--out", "{out}", "--no-progress"],
    "attribute": ["--model", TINY, "--data", DATA, "--out", "{out}", "--no-progress"],
    "circuit": ["--model", TINY, "--data", DATA, "--out", "{out}", "--no-progress"],
    "intervene": ["--model", TINY, "--scores", "{dir}", "--out", "{out}", "--null", "0",
                  "--no-progress"],
    "direct-effects": ["--model", TINY, "--data", DATA, "--out", "{out}", "--no-plot"],
    "run": ["--config", "{config}", "--out", "{out}", "--no-progress"],
    "report": ["--run", "{dir}", "--out", "{out}"],
}  # fmt: skip

# (command, what is bad, replaced flag and value, a fragment the error must show)
CASES: list[tuple[str, str, list[str], str]] = [
    ("cache", "model", ["--model", "nosuch:x"], "--model"),
    ("cache", "hook", ["--hooks", "bogus"], "--hooks"),
    ("cache", "data", ["--data", "{missing}"], "--data"),
    ("cache", "out", ["--out", "{file}"], "--out"),
    ("cache", "range", ["--batch-size", "0"], "--batch-size"),
    ("score", "hook", ["--hook", "bogus"], "--hook"),
    ("score", "data", ["--store", "{missing}"], "missing"),
    ("score", "out", ["--out", "{file}"], "--out"),
    ("score", "range", ["--top-n", "0"], "--top-n"),
    ("trace", "model", ["--model", "clip"], "--model"),
    ("trace", "data", ["--data", "{missing}"], "--data"),
    ("trace", "out", ["--out", "{file}"], "--out"),
    ("trace", "range", ["--n", "0"], "--n"),
    ("attribute", "model", ["--model", "nosuch:x"], "--model"),
    ("attribute", "data", ["--data", "{missing}"], "--data"),
    ("attribute", "out", ["--out", "{file}"], "--out"),
    ("attribute", "range", ["--limit", "-3"], "--limit"),
    ("circuit", "model", ["--model", "nosuch:x"], "--model"),
    ("circuit", "data", ["--data", "{missing}"], "--data"),
    ("circuit", "out", ["--out", "{file}"], "--out"),
    ("circuit", "range", ["--target", "1.5"], "--target"),
    ("intervene", "model", ["--model", "nosuch:x"], "--model"),
    ("intervene", "hook", ["--hooks", "bogus"], "--hooks"),
    ("intervene", "data", ["--data", "coco:x"], "--data"),
    ("intervene", "out", ["--out", "{file}"], "--out"),
    ("intervene", "range", ["--n", "0"], "--n"),
    ("direct-effects", "model", ["--model", "nosuch:x"], "--model"),
    ("direct-effects", "data", ["--data", "{missing}"], "--data"),
    ("direct-effects", "out", ["--out", "{file}"], "--out"),
    ("direct-effects", "range", ["--limit", "0"], "--limit"),
    ("run", "model", ["--config", "{config:model}"], "model.spec"),
    ("run", "data", ["--config", "{config:data}"], "missing"),
    ("run", "out", ["--out", "{file}"], "--out"),
    ("run", "range", ["--config", "{config:range}"], "sae.steps"),
    ("report", "data", ["--run", "{missing}"], "--run"),
    ("report", "out", ["--out", "{file}"], "--out"),
]

CONFIG = """
[run]
stages = ["cache"]
[model]
spec = "{spec}"
[data]
spec = "{data}"
[quality]
enabled = false
[sae]
steps = {steps}
"""


def _configs(tmp: Path) -> dict[str, Path]:
    variants = {
        "config": {"spec": TINY, "data": DATA, "steps": 10},
        "config:model": {"spec": "nosuch:x", "data": DATA, "steps": 10},
        "config:data": {"spec": TINY, "data": str(tmp / "missing"), "steps": 10},
        "config:range": {"spec": TINY, "data": DATA, "steps": 0},
    }
    out = {}
    for name, fields in variants.items():
        path = tmp / f"{name.replace(':', '_')}.toml"
        path.write_text(CONFIG.format(**fields))
        out[name] = path
    return out


def _argv(command: str, replace: list[str], tmp: Path) -> list[str]:
    (tmp / "file").write_text("not a folder")
    (tmp / "dir").mkdir(exist_ok=True)
    names = {"out": tmp / "out", "missing": tmp / "missing", "dir": tmp / "dir"}
    names |= {"file": tmp / "file", **_configs(tmp)}
    argv = list(BASE[command])
    for flag, value in zip(replace[::2], replace[1::2], strict=True):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return [command] + [re.sub(r"\{([a-z:]+)\}", lambda m: str(names[m[1]]), a) for a in argv]


@pytest.mark.parametrize(
    ("command", "what", "replace", "fragment"),
    CASES,
    ids=[f"{c}-{w}" for c, w, _, _ in CASES],
)
def test_bad_input_is_one_clear_line(
    command: str,
    what: str,
    replace: list[str],
    fragment: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = _argv(command, replace, tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 1, (argv, captured.out, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"vlmfast {command}: error:") and fragment in err, err
    assert (tmp_path / "file").read_text() == "not a folder"
    if command == "run":
        assert not list((tmp_path / "out").rglob("manifest.json"))
    else:
        assert not (tmp_path / "out").exists(), err


@pytest.mark.parametrize(
    ("command", "replace", "fragment"),
    [
        ("cache", ["--hooks", "image.blocks.99.resid_post"], "image.blocks.99.resid_post"),
        ("trace", ["--model", "hf:{missing}"], "missing"),
        ("attribute", ["--limit", "1"], "--limit must be >= 2"),
    ],
    ids=["cache-unknown-hook", "trace-missing-model", "attribute-one-pair"],
)
def test_errors_only_the_model_can_tell_leave_nothing(
    command: str,
    replace: list[str],
    fragment: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(_argv(command, replace, tmp_path))
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert fragment in err, err
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from vlmfast.errors import InputError

    argv = _argv("attribute", ["--limit", "1"], tmp_path)
    with pytest.raises(InputError, match="--limit must be >= 2"):
        main(["--debug", *argv])


def test_a_deprecated_flag_still_works_and_warns(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from vlmfast.cli.args import CliParser, DeprecatedAlias

    p = CliParser(prog="vlmfast x")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--n", dest="pairs", type=int, action=DeprecatedAlias, new="--pairs")
    with pytest.warns(DeprecationWarning, match="--n is deprecated.*--pairs"):
        ns = p.parse_args(["--n", "5"])
    assert ns == argparse.Namespace(pairs=5)
    assert "--n is deprecated" in capsys.readouterr().err


def test_run_whose_config_out_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("not a folder")
    cfg = tmp_path / "x.toml"
    cfg.write_text(f'[run]\nout = "{tmp_path / "file"}"\nstages = ["cache"]\n')
    assert main(["run", "--config", str(cfg), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(tmp_path / "file") in err
    assert (tmp_path / "file").read_text() == "not a folder"
