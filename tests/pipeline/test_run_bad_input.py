"""``vlmfast run`` on bad input: a folder without captions, an image it cannot read, an
unknown key. Each error names the file and the key or record, and the docs page that
explains the format."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_examples import EXAMPLES, tiny_copy, write_image_folder
from vlmfast.cli import main
from vlmfast.data import open_source
from vlmfast.data.sources.folder import FORMAT_DOCS
from vlmfast.pipeline.config import CONFIG_DOCS
from vlmfast.pipeline.stages.cache import skipped_line

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, folder: Path) -> Path:
    """The your-images example on ``folder``, tiny, its cache stage only."""
    extra = {"run": {"stages": ["cache"]}}
    return tiny_copy(EXAMPLES / "your_images.toml", folder, tmp_path / "run", extra)


def test_docs_pages_cited_by_errors_exist() -> None:
    assert (ROOT / FORMAT_DOCS).is_file() and (ROOT / CONFIG_DOCS).parent.is_dir()


def test_folder_without_captions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imgs"
    write_image_folder(folder, n=3)
    (folder / "captions.jsonl").unlink()
    assert main(["run", "--config", str(_config(tmp_path, folder))]) == 1
    err = capsys.readouterr().err
    assert str(folder) in err and "captions.jsonl" in err and FORMAT_DOCS in err


def test_no_readable_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imgs"
    write_image_folder(folder, n=3)
    for png in folder.glob("*.png"):
        png.write_bytes(b"not an image")
    assert main(["run", "--config", str(_config(tmp_path, folder))]) == 1
    err = capsys.readouterr().err
    assert "captions.jsonl:1 (img_00.png)" in err and "corrupt_image" in err
    assert FORMAT_DOCS in err


def test_one_unreadable_image_is_skipped_and_named(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    write_image_folder(folder, n=4)
    (folder / "img_02.png").write_bytes(b"not an image")
    source = open_source(f"folder:{folder}")
    assert len(list(source)) == 3
    line = skipped_line(f"folder:{folder}", source.report.as_dict())
    assert "1 bad records skipped" in line and "captions.jsonl:3 (img_02.png)" in line
    assert FORMAT_DOCS in line


def test_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imgs"
    cfg = _config(tmp_path, folder)
    cfg.write_text(cfg.read_text().replace("[sae]\n", "[sae]\nn_latent = 3\n"))
    assert main(["run", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert str(cfg) in err and "'n_latent'" in err and "[sae]" in err and CONFIG_DOCS in err
