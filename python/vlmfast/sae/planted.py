"""A planted benchmark for dictionaries: rows built from a known dictionary.

from vlmfast.sae.planted import PlantedConfig, PlantedGenerator
gen = PlantedGenerator(PlantedConfig(d=32, n_features=48, seed=0))
batch = gen.sample(4096)        # batch.rows [N, d], batch.activations [N, F]
gen.dictionary                  # [F, d] unit-norm true atoms

Each row is ``x = a @ D + offset + noise`` with ``D`` the true dictionary ``[F, d]`` and
``a >= 0`` the true activations ``[N, F]``. Features come in three roles (see
:class:`PlantedConfig`): *hierarchy* (a parent and its children; a child fires only on
rows where its parent fires), *groups* (members co-fire through a shared trigger) and
*independent* features. Base firing frequencies follow a power law over the features in
a seeded random order, so frequent and rare features are mixed across roles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from vlmfast.errors import InputError


@dataclass
class PlantedConfig:
    """What the planted generator builds; every draw follows ``seed``.

    Raises:
        InputError: (constructing) a size below 1, negative counts, roles that do not fit
            in ``n_features``, a probability outside [0, 1] or a negative noise / offset.
    """

    d: int = 32
    """Dimension of the rows (and of each atom)."""
    n_features: int = 48
    """Number of true features F (rows of the true dictionary)."""
    freq_max: float = 0.2
    """Base firing probability of the most frequent feature (per row)."""
    freq_exponent: float = 0.7
    """Power law of base frequencies: feature of rank r fires with ``freq_max * (r+1)^-exp``."""
    freq_min: float = 0.01
    """Floor on base frequencies, so every feature fires often enough to be learned."""
    n_parents: int = 4
    """Number of parent features in the hierarchy."""
    children_per_parent: int = 2
    """Children of each parent; a child fires only on rows where its parent fires."""
    child_prob: float = 0.4
    """Probability that a child fires, given that its parent fires."""
    child_parent_cosine: float = 0.0
    """Cosine between a child's atom and its parent's (0: independent random direction)."""
    n_groups: int = 4
    """Number of co-firing groups."""
    group_size: int = 3
    """Members per group."""
    group_cofire: float = 0.8
    """Probability that a member fires when its group's trigger fires."""
    group_solo: float = 0.005
    """Probability that a member fires on its own (without the trigger)."""
    magnitude_low: float = 0.5
    """Smallest magnitude of an active feature (magnitudes are uniform in [low, high])."""
    magnitude_high: float = 1.5
    """Largest magnitude of an active feature."""
    noise_std: float = 0.01
    """Standard deviation of isotropic Gaussian noise added to each coordinate."""
    offset_norm: float = 0.0
    """Norm of a constant offset added to every row (a random direction; 0: none)."""
    seed: int = 0
    """Seed of the dictionary, the roles, the frequencies and the sampled rows."""

    def __post_init__(self) -> None:
        if self.d < 1 or self.n_features < 1:
            raise InputError(
                f"PlantedConfig: d and n_features must be >= 1, got {self.d}, {self.n_features}"
            )
        used = self.n_parents * (1 + self.children_per_parent) + self.n_groups * self.group_size
        if min(self.n_parents, self.children_per_parent, self.n_groups, self.group_size) < 0:
            raise InputError("PlantedConfig: parent/child/group counts must be >= 0")
        if used > self.n_features:
            raise InputError(
                f"PlantedConfig: hierarchy ({self.n_parents} x (1 + {self.children_per_parent}))"
                f" and groups ({self.n_groups} x {self.group_size}) need {used} features,"
                f" more than n_features={self.n_features}"
            )
        probs = {
            "freq_max": self.freq_max,
            "freq_min": self.freq_min,
            "child_prob": self.child_prob,
            "group_cofire": self.group_cofire,
            "group_solo": self.group_solo,
        }
        for name, value in probs.items():
            if not 0.0 <= value <= 1.0:
                raise InputError(f"PlantedConfig.{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.magnitude_low <= self.magnitude_high:
            raise InputError(
                "PlantedConfig: need 0 <= magnitude_low <= magnitude_high, got"
                f" {self.magnitude_low}, {self.magnitude_high}"
            )
        if not -1.0 < self.child_parent_cosine < 1.0:
            raise InputError(
                f"PlantedConfig.child_parent_cosine must be in (-1, 1), got {self.child_parent_cosine}"
            )
        if self.noise_std < 0 or self.offset_norm < 0:
            raise InputError("PlantedConfig: noise_std and offset_norm must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a plain dict."""
        return asdict(self)


@dataclass
class PlantedMetadata:
    """The structure of the planted features (all tensors index features 0..F-1)."""

    parent: torch.Tensor
    """``[F]`` int64: a child's parent feature, -1 for features outside the hierarchy's children."""
    group: torch.Tensor
    """``[F]`` int64: the feature's co-firing group, -1 for none."""
    role: list[str]
    """Per feature: 'parent', 'child', 'group' or 'independent'."""
    base_frequency: torch.Tensor
    """``[F]`` float64: the power-law draw (a parent's or independent feature's firing rate;
    a group's trigger rate for the group's first member's draw)."""
    frequency: torch.Tensor
    """``[F]`` float64: each feature's expected firing probability per row (exact)."""
    group_trigger: torch.Tensor
    """``[n_groups]`` float64: firing probability of each group's trigger."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent": self.parent.tolist(),
            "group": self.group.tolist(),
            "role": list(self.role),
            "base_frequency": self.base_frequency.tolist(),
            "frequency": self.frequency.tolist(),
            "group_trigger": self.group_trigger.tolist(),
        }


@dataclass
class PlantedBatch:
    """Rows sampled from the planted model, with the activations that made them."""

    rows: torch.Tensor
    """``[N, d]`` float32 rows."""
    activations: torch.Tensor
    """``[N, F]`` float32 true activations (>= 0; zero where a feature is off)."""

    def sparse_activations(self) -> torch.Tensor:
        """Returns the activations as a sparse COO tensor ``[N, F]``."""
        return self.activations.to_sparse()


def _roles(cfg: PlantedConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Feature roles in index order: parents, children, group members, independents."""
    f = cfg.n_features
    parent = torch.full((f,), -1, dtype=torch.int64)
    group = torch.full((f,), -1, dtype=torch.int64)
    role = ["independent"] * f
    for p in range(cfg.n_parents):
        role[p] = "parent"
    nxt = cfg.n_parents
    for p in range(cfg.n_parents):
        for _ in range(cfg.children_per_parent):
            parent[nxt], role[nxt] = p, "child"
            nxt += 1
    for g in range(cfg.n_groups):
        for _ in range(cfg.group_size):
            group[nxt], role[nxt] = g, "group"
            nxt += 1
    return parent, group, role


def _dictionary(cfg: PlantedConfig, parent: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    atoms = torch.randn(cfg.n_features, cfg.d, generator=gen, dtype=torch.float64)
    atoms /= atoms.norm(dim=1, keepdim=True)
    c = cfg.child_parent_cosine
    if c != 0.0:
        for i in torch.nonzero(parent >= 0).flatten().tolist():
            up = atoms[int(parent[i])]
            ortho = atoms[i] - (atoms[i] @ up) * up
            ortho /= ortho.norm().clamp_min(1e-12)
            atoms[i] = c * up + (1.0 - c * c) ** 0.5 * ortho
    return atoms.float()


class PlantedGenerator:
    """The planted model of ``cfg``: a fixed dictionary and structure, and a seeded sampler.

    :meth:`sample` draws fresh rows on each call from one generator seeded by ``cfg.seed``,
    so a sequence of calls is reproducible. Raises :class:`InputError` (from the config)
    when the roles do not fit in ``n_features`` or a probability is out of range.
    """

    def __init__(self, cfg: PlantedConfig | None = None) -> None:
        self.cfg = cfg or PlantedConfig()
        gen = torch.Generator().manual_seed(self.cfg.seed)
        parent, group, role = _roles(self.cfg)
        self.dictionary = _dictionary(self.cfg, parent, gen)
        """``[F, d]`` float32 true atoms, unit norm."""
        ranks = torch.randperm(self.cfg.n_features, generator=gen).double()
        base = (self.cfg.freq_max * (ranks + 1) ** -self.cfg.freq_exponent).clamp_min(
            self.cfg.freq_min
        )
        base = base.clamp_max(1.0)
        offset = torch.randn(self.cfg.d, generator=gen, dtype=torch.float64)
        self.offset = (offset / offset.norm() * self.cfg.offset_norm).float()
        """``[d]`` float32 constant added to every row."""
        trigger = torch.zeros(self.cfg.n_groups, dtype=torch.float64)
        for g in range(self.cfg.n_groups):
            trigger[g] = base[int(torch.nonzero(group == g)[0])]
        self.metadata = PlantedMetadata(
            parent, group, role, base, self._frequency(base, parent, group, trigger), trigger
        )
        self._gen = torch.Generator().manual_seed(self.cfg.seed + 1)

    def _frequency(
        self, base: torch.Tensor, parent: torch.Tensor, group: torch.Tensor, trigger: torch.Tensor
    ) -> torch.Tensor:
        freq = base.clone()
        child = parent >= 0
        freq[child] = base[parent[child]] * self.cfg.child_prob
        member = group >= 0
        on = trigger[group[member]] * self.cfg.group_cofire
        freq[member] = 1.0 - (1.0 - on) * (1.0 - self.cfg.group_solo)
        return freq

    @property
    def n_features(self) -> int:
        return self.cfg.n_features

    def sample_activations(self, n_rows: int) -> torch.Tensor:
        """Returns ``[n_rows, F]`` float32 true activations (nonnegative magnitudes where on).

        Raises:
            InputError: ``n_rows`` is negative.
        """
        if n_rows < 0:
            raise InputError(f"PlantedGenerator.sample: n_rows must be >= 0, got {n_rows}")
        cfg, meta, gen = self.cfg, self.metadata, self._gen
        u = torch.rand(n_rows, cfg.n_features, generator=gen, dtype=torch.float64)
        fires = u < meta.base_frequency
        child = meta.parent >= 0
        if bool(child.any()):
            coin = torch.rand(n_rows, int(child.sum()), generator=gen, dtype=torch.float64)
            fires[:, child] = fires[:, meta.parent[child]] & (coin < cfg.child_prob)
        member = meta.group >= 0
        if bool(member.any()):
            on = torch.rand(n_rows, cfg.n_groups, generator=gen, dtype=torch.float64)
            on = on < meta.group_trigger
            shape = (n_rows, int(member.sum()))
            cofire = torch.rand(shape, generator=gen, dtype=torch.float64) < cfg.group_cofire
            solo = torch.rand(shape, generator=gen, dtype=torch.float64) < cfg.group_solo
            fires[:, member] = (on[:, meta.group[member]] & cofire) | solo
        span = cfg.magnitude_high - cfg.magnitude_low
        mags = cfg.magnitude_low + span * torch.rand(n_rows, cfg.n_features, generator=gen)
        return torch.where(fires, mags, torch.zeros(()))

    def sample(self, n_rows: int) -> PlantedBatch:
        """Returns ``n_rows`` fresh rows as a :class:`PlantedBatch` (rows ``[N, d]``,
        activations ``[N, F]``).

        Raises:
            InputError: ``n_rows`` is negative.
        """
        acts = self.sample_activations(n_rows)
        noise = torch.randn(n_rows, self.cfg.d, generator=self._gen) * self.cfg.noise_std
        rows = acts @ self.dictionary + self.offset + noise
        return PlantedBatch(rows.float(), acts)


def make_planted(
    cfg: PlantedConfig | None = None, n_rows: int = 4096
) -> tuple[PlantedBatch, torch.Tensor, PlantedMetadata]:
    """Returns ``(batch, dictionary [F, d], metadata)`` for ``n_rows`` rows of ``cfg``, in
    one call."""
    gen = PlantedGenerator(cfg)
    return gen.sample(n_rows), gen.dictionary, gen.metadata
