"""`vlmfast score` and score_store against an in-memory store with the ActivationStore interface."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from vlmfast.scoring.from_store import score_store

torch = pytest.importorskip("torch")


@dataclass
class _Index:
    sample: np.ndarray
    position: np.ndarray
    modality: np.ndarray


@dataclass
class _Labels:
    matrix: np.ndarray
    sample: np.ndarray
    names: list[str]
    kinds: list[str]


class FakeStore:
    """Rows: per sample one pooled image row, 3 image token rows, one pooled text row."""

    def __init__(self, n_samples: int = 120, d: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        lab = rng.random((n_samples, 3)) < 0.3
        rows, samples, pos, mod = [], [], [], []
        for s in range(n_samples):
            for p, m in ((-1, 0), (0, 0), (1, 0), (2, 0), (-1, 1)):
                x = rng.normal(size=d).astype(np.float32)
                x[0] += 4.0 * lab[s, 0]  # unit 0 reads concept 0 in both modalities
                if m == 0:
                    x[1] += 4.0 * lab[s, 1]  # unit 1 reads concept 1 on images only
                rows.append(x)
                samples.append(s + 1000)
                pos.append(p)
                mod.append(m)
        self.acts = np.stack(rows)
        self._index = _Index(np.array(samples), np.array(pos, np.int32), np.array(mod, np.uint8))
        # labels stored in a different sample order, one sample unlabeled
        order = np.arange(n_samples)[::-1][:-1]
        self.labels = _Labels(
            lab[order], order + 1000, ["dog", "red", "left of"], ["object", "color", "relation"]
        )

    def n_rows(self, hook: str) -> int:
        return len(self.acts)

    def read(self, hook: str, start: int = 0, stop: int | None = None):
        return torch.from_numpy(self.acts[start:stop])

    def index(self, hook: str) -> _Index:
        return self._index


def test_score_store_units_per_modality() -> None:
    store = FakeStore()
    seen: list[int] = []
    res = score_store(store, "joint.embed", batch_size=37, progress=seen.append)
    assert sum(seen) == store.n_rows("x")
    img, txt = res.per_modality["image"], res.per_modality["text"]
    assert img.scores.n_rows == 119 and txt.scores.n_rows == 119  # pooled rows, labeled samples
    assert img.selectivity.selective[0, 0] and txt.selectivity.selective[0, 0]
    assert img.selectivity.selective[1, 1] and not txt.selectivity.selective[1, 1]
    assert res.invariant is not None and res.invariant[0, 0]
    # exemplar rows point at store rows of the right modality
    top = img.scores.top_rows[0]
    assert (store._index.modality[img.rows[top[top >= 0]]] == 0).all()
    all_rows = score_store(store, "joint.embed", tokens="all")
    assert all_rows.per_modality["image"].scores.n_rows == 4 * 119


def test_cli_with_sae(tmp_path, monkeypatch, capsys) -> None:
    from vlmfast.cli import main
    from vlmfast.cli import score as score_cli
    from vlmfast.sae import TopKSAE

    store = FakeStore()
    sae = TopKSAE(d_in=8, n_latents=32, k=4)
    sae.save(tmp_path / "sae")
    monkeypatch.setattr(score_cli, "_open_store", lambda path: store)
    code = main(
        [
            "score",
            "--store",
            "S",
            "--sae",
            str(tmp_path / "sae"),
            "--hook",
            "joint.embed",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            "--batch-size",
            "100",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["modalities"]["image"]["units"] == 32
    assert summary["meta"]["source"] == "sae" and summary["meta"]["k"] == 4
    out = capsys.readouterr().out
    assert "[image]" in out and "[text]" in out and "summary.json" in out
    # the table equals scoring the SAE codes directly
    import zarr

    import vlmfast as vf

    rows = np.flatnonzero((store._index.position == -1) & (store._index.modality == 1))
    rows = rows[np.isin(store._index.sample[rows], store.labels.sample)]
    with torch.no_grad():
        v, i = sae.encode(torch.from_numpy(store.acts[rows]))
    lab_rows = np.searchsorted(store.labels.sample[::-1], store._index.sample[rows])
    want = vf.stats.auroc_sparse(i.numpy(), v.numpy(), store.labels.matrix[::-1][lab_rows], 32)
    got = zarr.open_group(str(tmp_path / "out" / "scores.zarr"), mode="r")["text/auroc"][:]
    np.testing.assert_array_equal(got, want)


def test_spilled_feature_blocks_equal_in_memory(tmp_path) -> None:
    from vlmfast.sae import TopKSAE

    store = FakeStore(n_samples=60)
    sae = TopKSAE(d_in=8, n_latents=24, k=3)
    full = score_store(store, "joint.embed", sae=sae)
    spilled = score_store(
        store, "joint.embed", sae=sae, feature_block=5, spill_dir=str(tmp_path), batch_size=50
    )
    for name in ("image", "text"):
        a, b = full.per_modality[name], spilled.per_modality[name]
        np.testing.assert_array_equal(a.scores.auroc, b.scores.auroc)
        np.testing.assert_array_equal(a.scores.se, b.scores.se)
        np.testing.assert_array_equal(a.rows[a.scores.top_rows], b.rows[b.scores.top_rows])
        np.testing.assert_array_equal(a.selectivity.selective, b.selectivity.selective)
    assert list(tmp_path.iterdir()) == []  # spill files removed


def test_cli_on_a_real_store(tmp_path, capsys) -> None:
    """End to end: an ActivationStore on disk, a TopKSAE checkpoint, `vlmfast score`."""
    import zarr

    from vlmfast.cli import main
    from vlmfast.sae import TopKSAE
    from vlmfast.store import ActivationStore

    fake = FakeStore(n_samples=50)
    idx = fake._index
    st = ActivationStore.create(
        tmp_path / "acts.zarr",
        {"joint.embed": 8},
        concepts=(fake.labels.names, fake.labels.kinds),
        chunk_rows=64,
    )
    st.append_many(
        {"joint.embed": fake.acts},
        {"sample": idx.sample, "position": idx.position, "modality": idx.modality},
        labels=fake.labels.matrix,
        label_samples=fake.labels.sample,
    )
    st.close()
    sae = TopKSAE(d_in=8, n_latents=16, k=3)
    sae.save(tmp_path / "sae")
    out = tmp_path / "scores"
    args = ["score", "--store", str(tmp_path / "acts.zarr"), "--hook", "joint.embed", "--out"]
    assert main([*args, str(out), "--sae", str(tmp_path / "sae"), "--no-progress"]) == 0
    assert main([*args, str(tmp_path / "units"), "--no-progress"]) == 0
    units = zarr.open_group(str(tmp_path / "units" / "scores.zarr"), mode="r")
    direct = score_store(fake, "joint.embed")
    np.testing.assert_array_equal(
        units["image/auroc"][:], direct.per_modality["image"].scores.auroc
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modalities"]["text"]["rows"] == 49
    g = zarr.open_group(str(out / "scores.zarr"), mode="r")
    rows, samples = g["image/top_rows"][:], g["image/top_samples"][:]
    np.testing.assert_array_equal(samples[rows >= 0], idx.sample[rows[rows >= 0]])
    assert "[image]" in capsys.readouterr().out
