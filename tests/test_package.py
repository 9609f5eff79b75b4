"""The package builds, imports lazily, ships its kernels and maps native errors."""

from __future__ import annotations

import filecmp
import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import vlmfast
from vlmfast import _native, errors

ROOT = Path(__file__).resolve().parents[1]


def test_import_has_no_heavy_side_effects() -> None:
    code = "import sys, vlmfast; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "code",
    [
        "import vlmfast.pipeline.config",
        "from vlmfast.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
        "from vlmfast.cli import main\ntry:\n    main(['trace', '--help'])\nexcept SystemExit:\n    pass",
    ],
    ids=["pipeline-config", "cli-help", "trace-help"],
)
def test_front_doors_validate_without_torch(code: str) -> None:
    """Parsing a config or the command line (and its errors) must not wait for torch."""
    check = f"import sys\n{code}\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


def test_native_module_loads() -> None:
    assert _native.__version__ == vlmfast.__version__
    assert _native.worker_threads() >= 1


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = vlmfast.no_such_thing  # type: ignore[attr-defined]


def test_error_hierarchy() -> None:
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.ShapeError, errors.InputError)
    assert issubclass(errors.StoreError, OSError)
    assert issubclass(errors.StoreFormatError, errors.StoreError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.VlmfastError)


def _kernel_sources() -> list[Path]:
    return sorted((ROOT / "kernels").glob("*.py"))


def test_kernels_are_copied_into_the_package() -> None:
    import vlmfast._kernels as shipped

    shipped_dir = Path(shipped.__file__).parent
    sources = _kernel_sources()
    assert sources, "kernels/ holds no kernel modules"
    for src in sources:
        copy = shipped_dir / src.name
        assert copy.exists(), f"{src.name} missing from vlmfast/_kernels (rerun `make native`)"
        assert filecmp.cmp(src, copy, shallow=False), f"{src.name} is stale: rerun `make native`"
        if src.stem != "__init__":
            importlib.import_module(f"vlmfast._kernels.{src.stem}")


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vlmfast", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: vlmfast" in out.stdout


@pytest.mark.slow
def test_wheel_ships_kernels_under_vlmfast(tmp_path: Path) -> None:
    """Builds the real wheel, installs it apart from the dev tree, imports a kernel module."""
    maturin = Path(sys.executable).with_name("maturin")
    subprocess.run(
        [str(maturin), "build", "--release", "-q", "--out", str(tmp_path / "dist")],
        cwd=ROOT,
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("vlmfast-*.whl")
    assert "abi3" in wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    for src in _kernel_sources():
        assert f"vlmfast/_kernels/{src.name}" in names
    assert not any(n.startswith("kernels/") for n in names), "a bare top-level kernels package"
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    modules = [s.stem for s in _kernel_sources() if s.stem != "__init__"] or [""]
    probe = (
        "import importlib, vlmfast, vlmfast._kernels as k; "
        f"[importlib.import_module('vlmfast._kernels.' + m) for m in {modules!r} if m]; "
        "print(vlmfast.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert out.stdout.strip().startswith(str(target))


def test_every_public_name_resolves() -> None:
    missing = []
    for name in vlmfast.__all__:
        try:
            getattr(vlmfast, name)
        except (AttributeError, ImportError) as err:
            missing.append(f"{name}: {err}")
    assert not missing, missing
