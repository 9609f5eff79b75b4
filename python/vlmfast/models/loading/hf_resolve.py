"""Find the local directory of an ``hf:`` spec without ever touching the network.

A spec is either a local directory (``hf:/data/clip-vit-base-patch32``) or a hub
id (``hf:openai/clip-vit-base-patch32``) already present in the Hugging Face cache.
Nothing is downloaded: the machines vlmfast runs on are often offline, and a hung
download is worse than a clear error that says where to put the files.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlmfast.errors import ModelLoadError

_HOW_TO_FIX = (
    "vlmfast never downloads: download the model once where you have network access "
    "(e.g. `huggingface-cli download {name} --local-dir ./{leaf}`, or "
    "`CLIPModel.from_pretrained(...).save_pretrained(dir)` plus the processor), "
    "then load it with `load_pair('hf:/path/to/dir')`"
)


def resolve_local_dir(name: str) -> Path:
    """The local directory holding ``config.json`` for ``name`` (a directory or a hub id).

    Raises ModelLoadError when the directory is missing, has no ``config.json``,
    or the hub id is not in the local Hugging Face cache.
    """
    if not name:
        raise ModelLoadError("empty hf: spec; expected 'hf:<local dir>' or 'hf:<org>/<model>'")
    path = Path(os.path.expanduser(name))
    looks_local = path.is_absolute() or name.startswith((".", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            raise ModelLoadError(f"hf model directory {name!r} does not exist")
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"hf model directory {name!r} has no config.json; point at the folder that "
                "`save_pretrained` wrote (config.json + model.safetensors)"
            )
        return path
    return _cached_snapshot(name)


def _cached_snapshot(repo_id: str) -> Path:
    fix = _HOW_TO_FIX.format(name=repo_id, leaf=repo_id.rsplit("/", 1)[-1])
    if repo_id.count("/") != 1:
        raise ModelLoadError(
            f"hf spec {repo_id!r} is neither an existing directory nor an '<org>/<model>' hub id; "
            + fix
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - transformers depends on it
        raise ModelLoadError(f"huggingface_hub is not installed; {fix}") from err
    try:
        snapshot = snapshot_download(repo_id, local_files_only=True)
    except Exception as err:  # LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError
        raise ModelLoadError(
            f"hf model {repo_id!r} is not in the local Hugging Face cache "
            f"({type(err).__name__}); {fix}"
        ) from err
    path = Path(snapshot)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"cached hf model {repo_id!r} at {path} has no config.json; {fix}")
    return path
