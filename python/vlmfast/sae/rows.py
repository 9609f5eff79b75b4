"""Which token rows of a stored hook an SAE trains on: the ``rows`` option.

A store holds, per hook, one row per cached token (``positions = "all"``) or one per
sample. The ``rows`` option picks among them, from the store's index (each row's
sample and token position) and its record of the image tower's CLS token:

- ``tokens`` (the default, :data:`DEFAULT_ROWS`): the token rows of either tower, an
  image hook's CLS row left out: the image SAE learns patch features (the CLS row is a
  summary with a much larger norm, which would dominate the loss), the text SAE every
  caption token, EOT included. A hook with one row per sample (``pooled``, ``embed``,
  or a store cached with ``positions`` ``cls`` / ``eot`` / ``pooled`` / ``mean``) keeps
  all its rows;
- ``all``: every row the store holds for the hook, CLS included (what ``vlmfast
  train-sae`` trained on before this option existed);
- ``patches``: an image hook's patch rows only (the CLS row left out); an image hook only;
- ``cls``: an image hook's CLS rows only (one per image; a tower with a CLS token);
- ``eot``: a text hook's EOT rows only (each caption's last token, its summary).

``vlmfast train-sae --rows`` and the pipeline's ``[sae] rows`` both default to
``tokens``; the choice is recorded in the checkpoint (``cfg.json``: ``vlmfast.rows``).
A ``joint.<point>`` hook applies the choice to its image and text parts.

The selection is computed window by window (:func:`row_mask`), so a streamed store and
one held in memory select the very same rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from vlmfast.errors import InputError

if TYPE_CHECKING:
    import torch

Rows = Literal["tokens", "all", "patches", "cls", "eot"]
ROWS: tuple[str, ...] = ("tokens", "all", "patches", "cls", "eot")
"""The values of the ``rows`` option (see the module docstring)."""
DEFAULT_ROWS: Rows = "tokens"
"""The default of ``vlmfast train-sae --rows`` and of the pipeline's ``[sae] rows``."""
ROWS_HELP = (
    "which token rows of the hook to train on: tokens (default: token rows, an image "
    "hook's CLS row left out), all (every stored row, CLS included), patches (image patch "
    "rows), cls (image CLS rows), eot (text EOT rows)"
)

_TOKEN_POSITIONS = (None, "all")
"""Store ``positions`` values under which a token hook holds one row per token."""


def _tower(hook: str) -> str:
    return hook.split(".", 1)[0]


def _has_cls(store: Any) -> bool:
    from vlmfast.store.schema import ATTR_TOWERS, TOWER_CLS_TOKEN, TOWER_IMAGE

    towers = store.attrs.get(ATTR_TOWERS) or {}
    return bool((towers.get(TOWER_IMAGE) or {}).get(TOWER_CLS_TOKEN))


def _token_rows(store: Any) -> bool:
    """Whether the store holds one row per token of its token hooks."""
    from vlmfast.store.schema import ATTR_POSITIONS

    return store.attrs.get(ATTR_POSITIONS) in _TOKEN_POSITIONS


def check_rows(store: Any, part: str, rows: str) -> None:
    """Raises ``InputError`` when ``rows`` does not apply to the store hook ``part``."""
    if rows not in ROWS:
        raise InputError(f"rows must be one of {', '.join(ROWS)}, got {rows!r}")
    tower = _tower(part)
    if rows in ("patches", "cls") and tower != "image":
        raise InputError(f"rows={rows!r} selects image rows; {part} is not an image hook")
    if rows == "cls" and not _has_cls(store):
        raise InputError(
            f"rows='cls': the store records no CLS token for the image tower of {part}"
        )
    if rows == "eot" and tower != "text":
        raise InputError(f"rows='eot' selects caption rows; {part} is not a text hook")


def _drops_cls(store: Any, part: str, rows: str) -> bool:
    return rows == "tokens" and _tower(part) == "image" and _has_cls(store) and _token_rows(store)


def row_mask(store: Any, part: str, rows: str, lo: int, hi: int) -> torch.Tensor | None:
    """Which of rows ``[lo, hi)`` of ``part`` are selected (bool ``[hi - lo]``); None: all."""
    import torch

    if rows == "all" or (rows == "tokens" and not _drops_cls(store, part, rows)):
        return None
    if rows == "eot":
        # the last stored row of its sample (a caption's rows are stored together, in order)
        stop = min(hi + 1, int(store.n_rows(part)))
        index = store.index(part, lo, stop)
        sample = torch.from_numpy(index.sample.astype("int64"))
        n, m = hi - lo, stop - lo - 1  # m: rows with a next row in the store
        last = torch.ones(n, dtype=torch.bool)
        last[:m] = sample[:m] != sample[1 : m + 1]
        position = torch.from_numpy(index.position[:n].astype("int64"))
        return last & (position >= 0)
    position = torch.from_numpy(store.index(part, lo, hi).position.astype("int64"))
    if rows == "cls":
        return position == 0
    if rows == "patches":
        return position > 0 if _has_cls(store) else position >= 0
    return position != 0  # tokens on an image hook with a CLS token


def count_rows(store: Any, part: str, rows: str, lo: int, hi: int, window: int) -> list[int]:
    """Selected rows in each window of ``window`` raw rows of ``[lo, hi)``."""
    counts = []
    for start in range(lo, hi, window):
        stop = min(hi, start + window)
        mask = row_mask(store, part, rows, start, stop)
        counts.append(stop - start if mask is None else int(mask.sum()))
    return counts
