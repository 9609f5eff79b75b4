"""The top-k sparse autoencoder module."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmfast import ops
from vlmfast.errors import InputError, ShapeError
from vlmfast.ops import threshold as threshold_ops
from vlmfast.sae.arch_config import BATCH_ARCHS
from vlmfast.sae.config import SAEConfig
from vlmfast.sae.files import read_sae_files, write_sae_files
from vlmfast.sae.median import geometric_median


@dataclass
class ForwardOutput:
    """Everything one training forward produces."""

    recon: torch.Tensor
    """``[N, d_in]`` reconstruction (in the units the SAE was called with)."""
    values: torch.Tensor
    """``[N, k]`` latent activations."""
    indices: torch.Tensor
    """``[N, k]`` latent indices."""
    aux_recon: torch.Tensor | None = None
    """``[N, d_in]`` AuxK reconstruction of the residual from dead latents (no b_dec)."""
    aux_indices: torch.Tensor | None = None
    """``[N, k_aux]`` latents the AuxK selection used."""
    rows: torch.Tensor | None = None
    """Flat codes (BatchTopK, Matryoshka, JumpReLU): ``values`` / ``indices`` are ``[nnz]``
    and this is each entry's row (see :mod:`vlmfast.ops.flat_codes`); None: ``[N, k]``."""
    prefix_recons: list[torch.Tensor] | None = None
    """Matryoshka: ``[N, d_in]`` reconstruction of every nested prefix (the last is ``recon``)."""
    l0_penalty: torch.Tensor | None = None
    """JumpReLU: mean active latents per row, with straight-through gradients to the thresholds."""
    min_selected: float | None = None
    """BatchTopK / Matryoshka: smallest positive activation the batch selection kept."""


class TopKSAE(nn.Module):
    """k-sparse autoencoder: ``x -> relu(topk(W_enc (x - b_dec) + b_enc)) -> W_dec^T z + b_dec``.

    Parameters are stored one row per latent (``W_enc``, ``W_dec``: ``[n_latents, d_in]``);
    checkpoints use the SAELens layout (``W_enc`` transposed to ``[d_in, d_sae]``).
    Decoder rows have unit norm; the encoder starts as the decoder's directions with rows
    of norm ``SAEConfig.encoder_init_norm``. ``input_scale`` (a buffer) multiplies inputs while
    training with ``SAEConfig.input_scaling``; :meth:`fold_input_scale` removes it.

    Raises:
        InputError: (constructing) ``cfg`` disagrees with ``d_in`` / ``n_latents`` / ``k``,
            or a config field is invalid.
    """

    input_scale: torch.Tensor
    threshold: torch.Tensor
    l0_weight: torch.Tensor

    def __init__(
        self, d_in: int, n_latents: int, k: int, *, cfg: SAEConfig | None = None, **cfg_fields: Any
    ) -> None:
        super().__init__()
        self.cfg = cfg or SAEConfig(d_in=d_in, n_latents=n_latents, k=k, **cfg_fields)
        if (self.cfg.d_in, self.cfg.n_latents, self.cfg.k) != (d_in, n_latents, k):
            raise InputError("TopKSAE: cfg disagrees with d_in/n_latents/k")
        gen = torch.Generator().manual_seed(self.cfg.seed)
        w_dec = torch.randn(n_latents, d_in, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        # encoder rows: the decoder's directions, of norm cfg.encoder_init_norm
        self.W_enc = nn.Parameter(w_dec * self.cfg.encoder_init_norm)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float64))
        self.b_dec_initialised = self.cfg.b_dec_init == "zeros"
        self._init_arch_state()

    def _init_arch_state(self) -> None:
        """Threshold state of the non-topk architectures (see :mod:`vlmfast.sae.archs`)."""
        self.threshold_updates = 0
        if self.cfg.arch in BATCH_ARCHS:
            self.register_buffer("threshold", torch.zeros(()))
        elif self.cfg.arch == "jumprelu":
            init = self.cfg.threshold_init or 1.0
            self.log_threshold = nn.Parameter(torch.full((self.cfg.n_latents,), math.log(init)))
            self.register_buffer("l0_weight", torch.tensor(float(self.cfg.l0_coef)))

    def threshold_tensor(self) -> torch.Tensor | None:
        """Returns the inference threshold in training-input units: ``[n_latents]`` (JumpReLU), 0-dim
        (BatchTopK, Matryoshka) or None (topk)."""
        if self.cfg.arch == "jumprelu":
            return self.log_threshold.exp()
        if self.cfg.arch in BATCH_ARCHS:
            return self.threshold
        return None

    @torch.no_grad()
    def set_threshold_(self, threshold: torch.Tensor) -> None:
        """Sets the inference threshold (``[n_latents]``; all equal for BatchTopK/Matryoshka)."""
        if self.cfg.arch == "jumprelu":
            self.log_threshold.copy_(threshold.clamp_min(1e-30).log())
        elif self.cfg.arch in BATCH_ARCHS:
            self.threshold.fill_(float(threshold.flatten()[0]) if threshold.numel() else 0.0)
        self.threshold_updates = max(1, self.threshold_updates)

    @classmethod
    def from_config(cls, cfg: SAEConfig) -> TopKSAE:
        """Returns a new SAE of architecture ``cfg`` (seeded by ``cfg.seed``)."""
        return cls(cfg.d_in, cfg.n_latents, cfg.k, cfg=cfg)

    # ------------------------------------------------------------------ shapes
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @property
    def k(self) -> int:
        return self.cfg.k

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ShapeError(
                f"SAE input must be [N, {self.d_in}] (d_in of this SAE), got {list(x.shape)}"
            )

    # ---------------------------------------------------------- public API
    def encode(
        self, x: torch.Tensor, *, backend: str = "auto"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the codes ``(values [N, k], indices [N, k])`` of ``x [N, d_in]``, values in
        the input's units.

        Threshold architectures return padded codes ``[N, w]`` (``w``: the most active
        latents of any row; zeros pad; see :mod:`vlmfast.ops.threshold`).

        Raises:
            ShapeError: ``x`` is not ``[N, d_in]``.
        """
        self._check_input(x)
        scale = float(self.input_scale)
        threshold = self.threshold_tensor()
        if threshold is not None:  # padded codes: [N, most active latents of a row]
            xs = x.to(self.W_enc.dtype) * scale
            args = (xs, self.W_enc, self.b_enc, self.b_dec, threshold.detach())
            out = threshold_ops.threshold_encode(*args, backend=backend)
            return out.values / scale, out.indices
        out = ops.topk_encode(
            x.to(self.W_enc.dtype) * scale,
            self.W_enc,
            self.b_enc,
            self.b_dec,
            self.k,
            backend=backend,
        )
        return out.values / scale, out.indices

    def decode(
        self, values: torch.Tensor, indices: torch.Tensor, *, backend: str = "auto"
    ) -> torch.Tensor:
        """Returns the reconstruction ``[N, d_in]`` (incl. ``b_dec``, in the input's units) of
        codes ``(values [N, k], indices [N, k])``.

        Raises:
            ShapeError: ``values`` and ``indices`` are not both ``[N, k]``.
            InputError: an index outside ``[0, n_latents)``.
        """
        if values.shape != indices.shape or values.ndim != 2:
            raise ShapeError(
                f"decode: values {list(values.shape)} and indices {list(indices.shape)} must both be [N, k]"
            )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.n_latents):
            raise InputError(f"decode: indices must lie in [0, {self.n_latents})")
        scale = float(self.input_scale)
        recon = ops.sparse_decode(
            values.to(self.W_dec.dtype) * scale, indices, self.W_dec, backend=backend
        )
        return (recon + self.b_dec) / scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the reconstruction of ``x [N, d_in]`` (``decode(encode(x))``)."""
        values, indices = self.encode(x)
        return self.decode(values, indices)

    # ------------------------------------------------------------- training
    def forward_train(
        self,
        x: torch.Tensor,
        dead_mask: torch.Tensor | None = None,
        *,
        compute_dtype: torch.dtype | None = None,
    ) -> ForwardOutput:
        """Returns the training forward on already-scaled inputs, with AuxK over ``dead_mask``
        (top-k only; :func:`vlmfast.sae.archs.forward_train` dispatches every architecture).

        Raises:
            InputError: this SAE is not a ``topk`` one.
        """
        if self.cfg.arch != "topk":
            raise InputError(
                f"TopKSAE.forward_train is the topk forward; this SAE is {self.cfg.arch!r}:"
                " use vlmfast.sae.archs.forward_train"
            )
        k_aux = self.cfg.aux_k if (self.cfg.auxk_coef > 0 and dead_mask is not None) else 0
        enc = ops.topk_encode(
            x,
            self.W_enc,
            self.b_enc,
            self.b_dec,
            self.k,
            dead_mask=dead_mask,
            k_aux=k_aux,
            compute_dtype=compute_dtype,
        )
        parts = [(enc.values, enc.indices)]
        if enc.aux_values is not None and enc.aux_indices is not None:
            parts.append((enc.aux_values, enc.aux_indices))
        decoded = ops.sparse_decode_many(parts, self.W_dec)
        recon = decoded[0] + self.b_dec
        # AuxK models the residual x - recon, which already contains b_dec: no bias here.
        aux_recon = decoded[1] if len(decoded) > 1 else None
        return ForwardOutput(recon, enc.values, enc.indices, aux_recon, enc.aux_indices)

    @torch.no_grad()
    def init_from_batch(self, x: torch.Tensor) -> None:
        """Sets ``input_scale`` (if configured) and ``b_dec`` from the first training batch.

        Raises:
            ShapeError: ``x`` is not ``[N, d_in]``.
            InputError: ``input_scaling`` and the batch has zero norm.
        """
        self._check_input(x)
        x64 = x.double()
        if self.cfg.input_scaling:
            mean_sq = float(x64.pow(2).sum(1).mean())
            if mean_sq <= 0:
                raise InputError("input_scaling: the first batch has zero norm")
            self.input_scale.fill_(mean_sq**-0.5)
        x64 = x64 * float(self.input_scale)
        if self.cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(x64).to(self.b_dec.dtype))
        elif self.cfg.b_dec_init == "mean":
            self.b_dec.copy_(x64.mean(0).to(self.b_dec.dtype))
        self.b_dec_initialised = True

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grads_(self) -> None:
        """Drop the component of each decoder row's gradient along the row itself.

        With unit-norm rows that component only changes the norm, which the
        renormalisation after the step would undo; removing it keeps Adam's moments clean.
        """
        if self.W_dec.grad is None:
            return
        w = self.W_dec
        g = self.W_dec.grad
        # in place, no [n_latents, d_in] temporaries (each costs page faults on CPU)
        g.addcmul_(w, torch.einsum("fd,fd->f", g, w).unsqueeze(1), value=-1.0)

    @torch.no_grad()
    def fold_input_scale(self) -> None:
        """Express the weights in the original input units and set ``input_scale`` to 1.

        With scaled inputs ``s*x`` the codes scale by ``s``; dividing both biases by ``s``
        gives the same latents (values divided by ``s``) and reconstructions ``recon/s``.
        """
        scale = float(self.input_scale)
        if scale == 1.0:
            return
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)
        if self.cfg.arch == "jumprelu":
            self.log_threshold.sub_(math.log(scale))
        elif self.cfg.arch in BATCH_ARCHS:
            self.threshold.div_(scale)
        self.input_scale.fill_(1.0)

    # -------------------------------------------------------------- storage
    def save(self, path: str | Path, **extra_cfg: Any) -> Path:
        """Writes ``sae_weights.safetensors`` + ``cfg.json`` (SAELens layout) to ``path``.

        The input scale is folded into the written weights (they act on raw inputs).

        Returns:
            The folder written, ``path``.
        """
        scale = float(self.input_scale)
        tensors = {
            "W_enc": self.W_enc.detach().float().t().contiguous().cpu(),
            "W_dec": self.W_dec.detach().float().contiguous().cpu(),
            "b_enc": (self.b_enc.detach().double() / scale).float().cpu(),
            "b_dec": (self.b_dec.detach().double() / scale).float().cpu(),
        }
        threshold = self.threshold_tensor()
        if threshold is not None:  # SAELens' jumprelu layout: one threshold per latent
            raw = threshold.detach().double().expand(self.n_latents) / scale
            tensors["threshold"] = raw.float().contiguous().cpu()
        return write_sae_files(path, self.cfg, tensors, input_scale=scale, **extra_cfg)

    @classmethod
    def load(
        cls, path: str | Path, *, device: str | torch.device = "cpu", allow_incomplete: bool = False
    ) -> TopKSAE:
        """Returns the vlmfast/SAELens (``sae_weights.safetensors``) or sparsify
        (``sae.safetensors``) SAE saved at ``path``.

        The folder of a training run that did not finish is refused ("incomplete run")
        unless ``allow_incomplete``.

        Raises:
            InputError: ``path`` holds no SAE (or a bad config), or an unfinished run.
            ShapeError: the weights disagree with each other or with the config.
        """
        files = read_sae_files(path, allow_incomplete=allow_incomplete)
        sae = cls.from_config(files.cfg)
        with torch.no_grad():
            sae.W_enc.copy_(files.w_enc)
            sae.W_dec.copy_(files.w_dec)
            sae.b_enc.copy_(files.b_enc)
            sae.b_dec.copy_(files.b_dec)
            if files.threshold is not None:
                sae.set_threshold_(files.threshold)
        sae.b_dec_initialised = True
        return sae.to(device)
