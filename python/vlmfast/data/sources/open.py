"""``open_source(spec, ...)``: one entry point for every pair source.

Specs (a prefix forces the type; a bare path is recognised by what it is):

- ``folder:PATH`` or a folder / ``.jsonl`` / ``.csv`` path: images + captions file;
- ``coco:CAPTIONS.json[?images=DIR&instances=INSTANCES.json&captions=first]`` or a ``.json`` path;
- ``wds:SHARDS`` or a ``.tar`` path / brace range / glob / folder of ``.tar``;
- ``synthetic:n=2000,seed=0[,split=test,noise=0,texture=0,start=0]``;
- any iterable of ``(image, caption[, meta])`` (not a string).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from vlmfast.data.sources.base import PairSource
from vlmfast.errors import InputError


def _split_query(text: str) -> tuple[str, dict[str, str]]:
    path, q, query = text.partition("?")
    if not q:
        return path, {}
    return path, {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


def _kind_of_path(path: str, spec: str) -> str:
    """The source type of a bare path: ``coco``, ``wds`` or ``folder``, from what it is."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".json":
        return "coco"
    if suffix == ".tar" or "{" in path or (p.is_dir() and any(p.glob("*.tar"))):
        return "wds"
    if p.is_dir() or suffix in (".jsonl", ".csv"):
        return "folder"
    if any(ch in path for ch in "*?["):
        return "wds"
    raise InputError(
        f"open_source: cannot tell what {spec!r} is (no such folder or file, or an "
        "unknown extension); use a prefix folder:, coco:, wds: or synthetic:"
    )


def open_source(
    spec: str | Path | Iterable[Any],
    limit: int | None = None,
    sample: float | None = None,
    seed: int = 0,
    require: str | Sequence[str] | None = None,
    decode_workers: int | None = None,
    concepts: str | Sequence[str] | None = None,
) -> PairSource:
    """Returns a ``PairSource`` for ``spec`` (see the module doc for the forms).

    ``limit``: at most this many records; ``sample``: keep each record with this
    probability (deterministic per ``seed`` and sample id); ``require``: kinds
    (``object``, ``attribute``, ``relation``, ...) the caption must all mention;
    ``decode_workers``: threads decoding images ahead of the reader (default: one
    per CPU, at most 8; 0 decodes in the reading thread; the records are the same);
    ``concepts``: the labeler's vocabularies (``"coco"`` for COCO's 80 categories plus
    attributes and relations, bundled names or JSON paths; default: ImageNet-R 200 + attributes
    + relations).

    Raises:
        InputError: ``spec`` is not a string, path or iterable, names no readable source, or
            has an unknown option; or another argument is invalid.
    """
    kw: dict[str, Any] = {
        "limit": limit,
        "sample": sample,
        "seed": seed,
        "require": require,
        "decode_workers": decode_workers,
        "concepts": concepts,
    }
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str):
        if not isinstance(spec, Iterable):
            raise InputError(
                f"open_source: spec must be a string, a path or an iterable, got {type(spec).__name__}"
            )
        from vlmfast.data.sources.iterable import IterableSource

        return IterableSource(spec, **kw)
    prefix, colon, rest = spec.partition(":")
    if colon and prefix in ("synthetic", "folder", "coco", "wds", "webdataset"):
        kind, target = prefix, rest
    else:
        kind, target = "", spec
    if kind == "synthetic":
        from vlmfast.data.sources.synthetic import SyntheticSource

        return SyntheticSource(target, **kw)
    path, query = _split_query(target)
    if not kind:
        kind = _kind_of_path(path, spec)
    if kind == "folder":
        from vlmfast.data.sources.folder import FolderSource

        return FolderSource(path, **kw)
    if kind == "coco":
        from vlmfast.data.sources.coco import CocoSource

        unknown = set(query) - {"images", "instances", "captions"}
        if unknown:
            raise InputError(f"open_source: unknown coco option(s) {sorted(unknown)} in {spec!r}")
        return CocoSource(
            path,
            images=query.get("images"),
            instances=query.get("instances"),
            captions_per_image=query.get("captions", "all"),
            **kw,
        )
    from vlmfast.data.sources.webdataset import WebDatasetSource

    return WebDatasetSource(path, **kw)
