"""``load``: a vlmfast :class:`TopKSAE` from a vlmfast, SAELens, sparsify, ViT-Prisma or saev checkpoint.

import vlmfast as vf
sae = vf.sae.load("saelens:out/sae")                  # cfg.json + sae_weights.safetensors
sae = vf.sae.load("sparsify:runs/clip:layers.8")      # run folder + hook (or the hook folder)
sae = vf.sae.load("prisma:sae.pt")                     # ViT-Prisma save_model file
sae = vf.sae.load("saev:sae.pt")                       # saev dump (JSON header + torch.save)
sae = vf.sae.load("out/sae")                           # what TopKSAE.save writes

The returned SAE encodes (``encode``: values and indices of the active latents) and
decodes as the original does, up to float rounding: a peer whose encoder does not
subtract ``b_dec`` (saev; SAELens with ``apply_b_dec_to_input=false``) has it folded into
``b_enc`` (``b_enc + W_enc b_dec``), and SAELens' ``rescale_acts_by_decoder_norm`` is
folded into the weights as SAELens' own ``fold_W_dec_norm`` does. SAELens ``jumprelu``
folders (its BatchTopK SAEs' inference saves among them) load as vlmfast ``jumprelu``
SAEs and its BatchTopK training checkpoints as ``batchtopk`` ones
(:mod:`vlmfast.sae.peers_jumprelu`). One difference is
inherent: saev's top-k keeps negative pre-activations when a row has fewer than k
positive ones, where vlmfast (like SAELens, sparsify and ViT-Prisma) keeps zeros.
The formats are described in :mod:`vlmfast.sae.peers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from vlmfast.errors import InputError, ShapeError
from vlmfast.sae.config import SAEConfig
from vlmfast.sae.files import CFG_FILE, SPARSIFY_WEIGHTS_FILE, WEIGHTS_FILE, check_complete
from vlmfast.sae.model import TopKSAE
from vlmfast.sae.peers import (
    SUPPORTED,
    PeerWeights,
    UnsupportedSAEError,
    int_key,
    read_json,
    read_saelens,
    read_saev,
    read_sparsify,
    saelens_architecture,
)
from vlmfast.sae.peers_jumprelu import load_saelens_batchtopk, load_saelens_jumprelu
from vlmfast.sae.peers_prisma import read_prisma

__all__ = ["KINDS", "SUPPORTED", "UnsupportedSAEError", "load", "parse_spec", "to_topk_sae"]

KINDS = ("vlmfast", "saelens", "sparsify", "prisma", "saev")
"""The ``KIND:`` prefixes :func:`load` knows (no prefix: a vlmfast directory)."""


def parse_spec(spec: str | Path) -> tuple[str, Path, str | None]:
    """Returns ``(kind, path, hook)`` of a :func:`load` spec.

    ``"KIND:PATH"`` for a kind in :data:`KINDS`; ``"sparsify:DIR:HOOK"`` names one hook's
    folder of a sparsify run (used when ``DIR:HOOK`` is not itself an existing path); a
    ``Path`` or a string without a known prefix is a vlmfast directory. Raises
    ``InputError`` for an unknown ``KIND:`` prefix (a word followed by a colon that is
    not an existing path) or an empty path.
    """
    if isinstance(spec, Path):
        return "vlmfast", spec, None
    kind, sep, rest = spec.partition(":")
    if not sep or Path(spec).exists():
        return "vlmfast", Path(spec), None
    if kind not in KINDS:
        if kind.isidentifier() and len(kind) > 1:
            raise InputError(
                f"SAE spec {spec!r}: unknown kind {kind!r}; use one of "
                f"{', '.join(k + ':PATH' for k in KINDS)} or a vlmfast directory"
            )
        return "vlmfast", Path(spec), None
    if not rest:
        raise InputError(f"SAE spec {spec!r}: no path after '{kind}:'")
    if kind == "sparsify" and not Path(rest).exists() and ":" in rest:
        folder, hook = rest.rsplit(":", 1)
        return kind, Path(folder), hook
    return kind, Path(rest), None


def to_topk_sae(weights: PeerWeights, *, device: str | torch.device = "cpu") -> TopKSAE:
    """Returns a :class:`TopKSAE` computing what ``weights`` computes (``b_dec`` folded as needed).

    Raises ``ShapeError`` (naming ``weights.source``) when the tensors do not fit together
    and ``InputError`` when ``k`` exceeds the number of latents.
    """
    n_latents, d_in = weights.w_dec.shape
    if weights.w_enc.shape != (n_latents, d_in) or weights.b_enc.shape != (n_latents,):
        raise ShapeError(f"{weights.source}: encoder and decoder shapes disagree")
    b_enc = weights.b_enc.double()
    if not weights.b_dec_in_encoder:
        # x W + b == (x - b_dec) W + (b + b_dec W): vlmfast always subtracts b_dec first.
        b_enc = b_enc + weights.w_enc.double() @ weights.b_dec.double()
    if weights.k > n_latents:
        raise InputError(f"{weights.source}: k={weights.k} exceeds the {n_latents} latents")
    cfg = SAEConfig(
        d_in=d_in,
        n_latents=n_latents,
        k=weights.k,
        hook=weights.hook,
        model=weights.model,
        b_dec_init="zeros",
    )
    sae = TopKSAE.from_config(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(weights.w_enc)
        sae.b_enc.copy_(b_enc.float())
        sae.W_dec.copy_(weights.w_dec)
        sae.b_dec.copy_(weights.b_dec)
    sae.b_dec_initialised = True
    return sae.to(device)


def _check_vlmfast_dir(root: Path) -> None:
    """Config keys against the tensors' shapes (``ShapeError`` naming the file and the key)."""
    cfg_path = root / CFG_FILE
    cfg = read_json(cfg_path)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"{root}: no {WEIGHTS_FILE}")
    with safe_open(str(weights), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    if "W_dec" not in shapes:
        raise InputError(f"{weights}: tensor 'W_dec' is missing (have {sorted(shapes)})")
    n_latents, d_in = shapes["W_dec"]
    raw = cfg.get("vlmfast")
    saved: dict[str, Any] = raw if isinstance(raw, dict) else {}
    declared = [("d_in", cfg, d_in), ("d_sae", cfg, n_latents)]
    declared += [("vlmfast.d_in", saved, d_in), ("vlmfast.n_latents", saved, n_latents)]
    for key, source, actual in declared:
        name = key.split(".")[-1]
        if name in source and int_key(source, name, cfg_path) != actual:
            raise ShapeError(
                f"{cfg_path}: config key {key!r}={source[name]} but {weights.name} tensor "
                f"'W_dec' has shape {[n_latents, d_in]} ([d_sae, d_in])"
            )
    k = saved.get("k", cfg.get("k"))
    if isinstance(k, int) and not 1 <= k <= n_latents:
        raise InputError(f"{cfg_path}: config key 'k'={k} is not in [1, {n_latents}]")


def _load_saelens(root: Path, device: str | torch.device) -> TopKSAE:
    """A SAELens directory by its architecture: topk, jumprelu or a batchtopk training
    checkpoint (see :mod:`vlmfast.sae.peers_jumprelu`); others raise UnsupportedSAEError."""
    arch = saelens_architecture(read_json(root / CFG_FILE))
    if arch == "jumprelu":
        return load_saelens_jumprelu(root, device=device)
    if arch == "batchtopk":
        return load_saelens_batchtopk(root, device=device)
    return to_topk_sae(read_saelens(root), device=device)


def _load_dir(root: Path, device: str | torch.device) -> TopKSAE:
    """A directory given without a kind: vlmfast's own, or else SAELens' or sparsify's layout."""
    if not root.is_dir():
        raise InputError(f"SAE checkpoint {root}: no such directory")
    has_cfg = (root / CFG_FILE).is_file()
    if (root / WEIGHTS_FILE).is_file() and has_cfg:
        if "vlmfast" not in read_json(root / CFG_FILE):
            return _load_saelens(root, device)
        _check_vlmfast_dir(root)
        return TopKSAE.load(root, device=device)
    if (root / SPARSIFY_WEIGHTS_FILE).is_file() or not has_cfg:
        return to_topk_sae(read_sparsify(root), device=device)
    raise InputError(
        f"{root}: has {CFG_FILE} but neither {WEIGHTS_FILE} nor {SPARSIFY_WEIGHTS_FILE}"
    )


def load(spec: str | Path, *, device: str | torch.device = "cpu") -> TopKSAE:
    """Returns a vlmfast :class:`TopKSAE` that encodes and decodes as the checkpoint ``spec`` does.

    ``spec``: ``"saelens:DIR"``, ``"sparsify:DIR"`` (one hook's folder) or
    ``"sparsify:DIR:HOOK"``, ``"prisma:FILE"``, ``"saev:FILE"``, or a vlmfast directory
    (what :meth:`TopKSAE.save` writes; a SAELens or sparsify folder given without a
    prefix is recognised by its files). Weights come back float32 on ``device``.

    Raises :class:`UnsupportedSAEError` (an ``InputError``) for a checkpoint of an
    architecture vlmfast does not have (the message names the file, the architecture
    found and what is supported), ``ShapeError`` when a config and its tensors disagree
    (naming the file and the key), ``InputError`` for a missing file or an unknown kind.
    A vlmfast directory of an unfinished run is refused ("incomplete run").
    """
    kind, path, hook = parse_spec(spec)
    if kind == "vlmfast":
        return _load_dir(path, device)
    if kind == "saelens":
        if not path.is_dir():
            raise InputError(f"saelens:{path}: no such directory")
        if "vlmfast" in read_json(path / CFG_FILE):
            check_complete(path)
            _check_vlmfast_dir(path)
        return _load_saelens(path, device)
    if kind == "sparsify":
        return to_topk_sae(read_sparsify(path, hook), device=device)
    if kind == "prisma":
        return to_topk_sae(read_prisma(path), device=device)
    return to_topk_sae(read_saev(path), device=device)
