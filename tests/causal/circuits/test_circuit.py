"""find_circuit's pieces on the bundled model: grid, sparsity rule, text cut, custom families."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlmfast as vf
from vlmfast.causal.circuits.engine import CircuitEvaluator
from vlmfast.causal.circuits.families import (
    AblationSources,
    ComponentFamily,
    HeadFamily,
    SetAblated,
)
from vlmfast.causal.circuits.inputs import circuit_inputs as _inputs
from vlmfast.causal.circuits.null import (
    keep_masks,
    log_grid,
    run_null,
    sparsity_index,
    thin_grid,
)
from vlmfast.causal.circuits.types import CircuitNode
from vlmfast.causal.core.metrics import MatchedScore
from vlmfast.errors import InputError
from vlmfast.models.interventions import Intervention, PerRow


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, torch.Tensor, torch.Tensor]:
    pair = vf.load_pair("synthetic:tiny").eval()
    s = pair.config.image.image_size
    px = torch.randn(4, 3, s, s, generator=torch.Generator().manual_seed(0))
    tok = pair.tokenize(["a red cube", "a blue ball left of a cone", "two green cones", "a cat"])
    return pair, px, tok


def test_log_grid_and_keep_masks() -> None:
    g = log_grid(288, 32)
    assert len(g) == 32 and g[0] == 0 and g[-1] == 288 and g == sorted(set(g))
    assert g[:6] == [0, 1, 2, 3, 4, 5]  # dense where circuits are small
    assert log_grid(10, 32) == list(range(11))
    order = torch.tensor([2, 0, 1])
    assert keep_masks(order, [0, 1, 3], 3).tolist() == [
        [False, False, False],
        [False, False, True],
        [True, True, True],
    ]


def test_sparsity_rule_needs_every_later_size() -> None:
    # the first crossing (index 1) is not the circuit: f dips below target at index 2
    assert sparsity_index([0.0, 0.9, 0.5, 0.85, 1.0], 0.8) == 3
    assert sparsity_index([0.0, 0.2, 1.0], 1.0) == 2


def test_null_pvalue_has_the_plus_one_correction() -> None:
    n = 6
    grid = [0, 1, 2, 3, 6]

    def evaluate(keep: torch.Tensor) -> torch.Tensor:  # f = 1 once node 0 is kept
        return keep[:, 0].double()

    s = run_null(
        evaluate, n, grid, size=30, seed=0, target=0.8, m_empty=0.0, m_model=1.0,
        observed_sparsity=1 / n, pvalue=True,
    )  # fmt: skip
    hits = sum(x <= 1 / n for x in s.sparsity)
    assert s.pvalue == pytest.approx((1 + hits) / 31)
    assert all(c[0] == 0.0 and c[-1] == 1.0 for c in s.curves)
    again = run_null(
        evaluate, n, grid, size=30, seed=0, target=0.8, m_empty=0.0, m_model=1.0,
        observed_sparsity=1 / n, pvalue=True,
    )  # fmt: skip
    assert again.curves == s.curves


def test_text_cut_after_eot_is_exact(tiny: Any) -> None:
    pair, px, tok = tiny
    clean, _, _ = _inputs(pair, px, tok, None, tok.roll(1, 0), None)
    assert clean["text"].shape[1] == int(tok.argmax(-1).max()) + 1 < tok.shape[1]
    cfg = pair.config

    def fams() -> list[Any]:
        return [HeadFamily(t, cfg.tower(t).layers, cfg.tower(t).heads) for t in ("image", "text")]

    full = CircuitEvaluator(
        pair, {"image": px, "text": tok}, fams(), MatchedScore(), "logits", ablation="mean"
    )
    cut = CircuitEvaluator(pair, clean, fams(), MatchedScore(), "logits", ablation="mean")
    keep = torch.rand(6, len(full.nodes), generator=torch.Generator().manual_seed(1)) < 0.5
    assert float((full.evaluate(keep).metric - cut.evaluate(keep).metric).abs().max()) < 1e-5


class ResidDims:
    """A minimal third-party family (the protocol H2's SAE features implement): residual
    dimensions of ``blocks.L.resid_post``, mean-ablated per dimension."""

    kind = "features"

    def __init__(self, tower: str, layer: int, dims: list[int]) -> None:
        self.tower, self.layer, self.dims = tower, layer, dims
        self.hook = f"{tower}.blocks.{layer}.resid_post"
        self.value: torch.Tensor | None = None

    def nodes(self) -> list[CircuitNode]:
        return [CircuitNode(self.tower, self.kind, self.layer, d, self.hook) for d in self.dims]

    def hooks(self) -> list[str]:
        return [self.hook]

    def prepare(self, sources: AblationSources) -> None:
        self.value = sources.reference[self.hook].mean(0, keepdim=True)

    def interventions(self, keep: torch.Tensor, n_rows: int) -> list[Intervention]:
        assert self.value is not None
        width = self.value.shape[-1]
        mask = torch.zeros(keep.shape[0], width, dtype=torch.bool)
        mask[:, self.dims] = ~keep
        if not bool(mask.any()):
            return []
        return [
            SetAblated(self.hook, self.value, neurons=PerRow(mask.repeat_interleave(n_rows, 0)))
        ]

    def scores(self, ranking: str) -> torch.Tensor:
        return torch.arange(len(self.dims), 0, -1).double()  # first dims first


def test_a_custom_family_plugs_into_find_circuit(tiny: Any) -> None:
    pair, px, tok = tiny
    fam = ResidDims("image", 1, list(range(16)))
    assert isinstance(fam, ComponentFamily)
    kw: dict[str, Any] = dict(
        corrupt_images=px.roll(1, 0), components=("heads",), towers=("image",),
        families=[fam], ranking="atp", null=0, grid=8,
    )  # fmt: skip
    b = vf.causal.find_circuit(pair, px, tok, **kw)
    s = vf.causal.find_circuit(pair, px, tok, method="serial", **kw)
    assert b.n_nodes == 4 * 4 + 16
    assert {n.kind for n in b.order} == {"heads", "features"}
    assert max(abs(x - y) for x, y in zip(b.metric, s.metric, strict=True)) < 1e-5
    assert b.meta["families"] == ["image/heads", "image/features"]


def test_resample_without_corrupt_text_rolls_the_batch(tiny: Any) -> None:
    pair, px, tok = tiny
    c = vf.causal.find_circuit(
        pair, px, tok, corrupt_images=px.roll(1, 0), components=("heads",), ablation="resample",
        null=0, grid=6, n_boot=50,
    )  # fmt: skip
    assert c.meta["resample_source"] == {"image": "corrupt", "text": "clean rolled by one row"}
    assert c.ablation == "resample" and c.curve[0] == 0.0 and c.curve[-1] == 1.0
    rows = c.rows()
    assert {r["table"] for r in rows} == {"curve", "component"}
    assert len({tuple(r) for r in rows}) == 1  # one set of columns


def test_mean_over_a_reference_batch(tiny: Any) -> None:
    pair, px, tok = tiny
    kw: dict[str, Any] = dict(
        components=("heads",), towers=("image",), ranking="exact", null=0, grid=6, n_boot=0
    )
    base = vf.causal.find_circuit(pair, px, tok, **kw)
    same = vf.causal.find_circuit(pair, px, tok, reference={"images": px}, **kw)
    other = vf.causal.find_circuit(pair, px, tok, reference={"images": px.flip(-1) * 2}, **kw)
    assert same.metric == base.metric
    assert abs(other.metric_empty - base.metric_empty) > 1e-3
    assert "reference=" in other.meta["ablation_detail"]
    assert base.metric_model == other.metric_model  # nothing ablated: the reference is moot


def test_a_family_with_nodes_outside_the_blocks_is_an_error(tiny: Any) -> None:
    pair, px, tok = tiny
    fam = ResidDims("image", 1, [0])
    fam.layer = 9  # the bundled image tower has 4 blocks
    with pytest.raises(InputError, match="outside blocks"):
        CircuitEvaluator(
            pair, {"image": px, "text": tok}, [fam], MatchedScore(), "logits", ablation="mean"
        )


def test_thin_grid_is_an_even_subset_with_both_ends() -> None:
    g = log_grid(288, 32)
    t = thin_grid(g, 8)
    assert len(t) == 8 and t[0] == 0 and t[-1] == 288 and set(t) <= set(g)
    assert t == sorted(t)
    assert thin_grid(g, 32) == g and thin_grid(g, 100) == g
    assert thin_grid([0, 5, 9], 2) == [0, 9]


def test_null_grid_evaluates_the_null_on_a_subset(tiny: Any, monkeypatch: Any) -> None:
    """The null's curves cost len(null_grid) - 2 sizes each, and its p-value compares the
    observed sparsity read on that same subset."""
    pair, px, tok = tiny
    px_c = torch.randn(px.shape, generator=torch.Generator().manual_seed(1))
    seen: list[int] = []
    real = CircuitEvaluator.evaluate

    def counting(self: Any, keep: torch.Tensor, method: str = "batched") -> Any:
        seen.append(int(keep.shape[0]))
        return real(self, keep, method)

    monkeypatch.setattr(CircuitEvaluator, "evaluate", counting)
    kw: dict[str, Any] = dict(
        corrupt_images=px_c, components=("heads", "neurons"), towers=("image",), null=20,
        grid=16, n_boot=0,
    )  # fmt: skip
    full = vf.causal.find_circuit(pair, px, tok, **kw)
    calls_full = list(seen)
    seen.clear()
    thin = vf.causal.find_circuit(pair, px, tok, null_grid=5, **kw)
    assert full.null is not None and thin.null is not None
    ks = log_grid(full.n_nodes, 16)
    assert full.null.k == ks and thin.null.k == thin_grid(ks, 5)
    assert thin.meta["null_grid"] == 5 and full.meta["null_grid"] == len(ks)
    # the observed curve is the same; the null evaluates 3 inner sizes, not 14
    assert thin.k == full.k and thin.curve == full.curve
    assert sum(seen) - sum(calls_full) == 20 * (3 - (len(ks) - 2))
    on_thin = {k: f for k, f in zip(full.k, full.curve, strict=True) if k in thin.null.k}
    f_thin = [on_thin[k] for k in thin.null.k]
    observed = thin.null.k[sparsity_index(f_thin, full.target)] / full.n_nodes
    assert thin.null.observed_sparsity == pytest.approx(observed)
    hits = sum(x <= observed for x in thin.null.sparsity)
    assert thin.null.pvalue == pytest.approx((1 + hits) / 21)
    with pytest.raises(InputError, match="null_grid"):
        vf.causal.find_circuit(pair, px, tok, null_grid=1, **kw)


def test_a_config_and_keywords_are_the_same_call(tiny: Any) -> None:
    """``find_circuit(..., config=CircuitConfig(...))`` is the keyword call; keywords given
    with a config replace its fields, and an unknown option is a TypeError."""
    pair, px, tok = tiny
    kw: dict[str, Any] = dict(
        components=("heads",), towers=("image",), ranking="exact", null=0, grid=6, n_boot=0
    )
    by_kw = vf.causal.find_circuit(pair, px, tok, **kw)
    config = vf.causal.CircuitConfig(**kw)
    by_config = vf.causal.find_circuit(pair, px, tok, config=config)
    assert by_config.to_json() == by_kw.to_json()
    mixed = vf.causal.find_circuit(pair, px, tok, config=config, target=0.5)
    assert mixed.target == 0.5 and config.target == 0.8
    with pytest.raises(TypeError, match="targte"):
        vf.causal.find_circuit(pair, px, tok, targte=0.5)
