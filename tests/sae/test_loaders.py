"""``vf.sae.load``: peer checkpoints (written by the peers themselves) encode and decode as they do.

The fixtures under ``fixtures/`` were written by each package's own save function, with
the package's own encode/decode of fixed inputs recorded beside them (see
``fixtures/make_peer_fixtures.py`` and ``fixtures/VERSIONS.txt``). Each test checks
three things: the peer's formula, written out here, reproduces what the package
recorded (our reading of the format is right); the loaded vlmfast SAE reproduces both;
and a loader that got the convention wrong (no fold) would fail (the test can fail).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tolerance import assert_close
from vlmfast.errors import InputError, ShapeError
from vlmfast.sae import TopKSAE, UnsupportedSAEError, load, parse_spec

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOL = {"atol": 2e-5, "rtol": 2e-5}


def _dense(values: torch.Tensor, indices: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(values.shape[0], n).scatter(1, indices, values)


def _vlmfast_outputs(sae: TopKSAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        values, indices = sae.encode(x)
        return _dense(values, indices, sae.n_latents), sae.decode(values, indices)


def _topk_dense(pre: torch.Tensor, k: int, *, relu: bool) -> torch.Tensor:
    top = pre.topk(k, dim=-1)
    values = top.values.relu() if relu else top.values
    return torch.zeros_like(pre).scatter(1, top.indices, values)


def _recorded(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


# ------------------------------------------------------------------ SAELens


def _saelens_formula(root: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens v6 TopKSAE: encode/decode as its topk_sae.py and sae.py write them."""
    cfg = json.loads((root / "cfg.json").read_text())
    t = load_file(str(root / "sae_weights.safetensors"))
    sae_in = x - t["b_dec"] * float(cfg["apply_b_dec_to_input"])
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    norms = t["W_dec"].norm(dim=-1)
    if cfg["rescale_acts_by_decoder_norm"]:
        pre = pre * norms
    codes = _topk_dense(pre, cfg["k"], relu=True)
    acts = codes / norms if cfg["rescale_acts_by_decoder_norm"] else codes
    return codes, acts @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("name", ["saelens_topk", "saelens_topk_nobdec"])
def test_saelens_topk_matches_saelens(name):
    root = FIXTURES / name
    rec = _recorded(root / "peer_outputs.safetensors")
    codes, recon = _saelens_formula(root, rec["x"])
    torch.testing.assert_close(codes, rec["codes"], **TOL)
    torch.testing.assert_close(recon, rec["recon"], **TOL)
    sae = load(f"saelens:{root}")
    assert (sae.d_in, sae.n_latents, sae.k) == (8, 16, 4)
    got_codes, got_recon = _vlmfast_outputs(sae, rec["x"])
    torch.testing.assert_close(got_codes, rec["codes"], **TOL)
    torch.testing.assert_close(got_recon, rec["recon"], **TOL)
    # Also recognised without the prefix (its layout), and the hook is kept.
    torch.testing.assert_close(_vlmfast_outputs(load(root), rec["x"])[1], rec["recon"], **TOL)
    assert sae.cfg.hook == "blocks.3.hook_resid_post"


def test_saelens_conventions_matter():
    """A load that ignored the decoder-norm rescale or b_dec's place would be caught."""
    for name in ("saelens_topk", "saelens_topk_nobdec"):
        root = FIXTURES / name
        rec = _recorded(root / "peer_outputs.safetensors")
        t = load_file(str(root / "sae_weights.safetensors"))
        naive = TopKSAE(8, 16, 4)
        with torch.no_grad():
            naive.W_enc.copy_(t["W_enc"].t())
            naive.b_enc.copy_(t["b_enc"])
            naive.W_dec.copy_(t["W_dec"])
            naive.b_dec.copy_(t["b_dec"])
        codes = _vlmfast_outputs(naive, rec["x"])[0]
        assert not torch.allclose(codes, rec["codes"], atol=1e-3), name


def _saelens_jumprelu_formula(root: Path, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """SAELens v6 JumpReLUSAE: ``relu(pre) * (pre > threshold)``, as its jumprelu_sae.py;
    returns ``(codes, recon, pre)``."""
    cfg = json.loads((root / "cfg.json").read_text())
    t = load_file(str(root / "sae_weights.safetensors"))
    pre = (x - t["b_dec"] * float(cfg["apply_b_dec_to_input"])) @ t["W_enc"] + t["b_enc"]
    codes = pre.relu() * (pre > t["threshold"])
    return codes, codes @ t["W_dec"] + t["b_dec"], pre


@pytest.mark.parametrize(
    "name", ["saelens_jumprelu", "saelens_jumprelu_nobdec", "saelens_batchtopk"]
)
def test_saelens_jumprelu_matches_saelens(name):
    """SAELens jumprelu folders, its BatchTopK inference save among them, load as jumprelu."""
    root = FIXTURES / name
    rec = _recorded(root / "peer_outputs.safetensors")
    codes, recon, pre = _saelens_jumprelu_formula(root, rec["x"])
    assert_close(codes, rec["codes"])
    assert_close(recon, rec["recon"])
    # the thresholds matter: they drop positive pre-activations, and keep some
    assert 0 < int((rec["codes"] > 0).sum()) < int((pre > 0).sum())
    for spec in (f"saelens:{root}", root):
        sae = load(spec)
        assert sae.cfg.arch == "jumprelu" and sae.cfg.hook == "blocks.3.hook_resid_post"
        got_codes, got_recon = _vlmfast_outputs(sae, rec["x"])
        assert_close(got_codes, rec["codes"])
        assert_close(got_recon, rec["recon"])


def test_saelens_batchtopk_inference_save_is_its_jumprelu_form():
    cfg = json.loads((FIXTURES / "saelens_batchtopk" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    assert cfg["metadata"]["training_architecture"] == "batchtopk"
    threshold = load_file(str(FIXTURES / "saelens_batchtopk" / "sae_weights.safetensors"))[
        "threshold"
    ]
    assert bool((threshold == threshold[0]).all()) and float(threshold[0]) > 0


def test_saelens_batchtopk_training_checkpoint_loads_as_batchtopk():
    """SAELens' BatchTopK training checkpoint encodes as SAELens' own inference save of it."""
    root = FIXTURES / "saelens_batchtopk_training"
    cfg = json.loads((root / "cfg.json").read_text())
    assert cfg["architecture"] == "batchtopk" and cfg["rescale_acts_by_decoder_norm"]
    rec = _recorded(FIXTURES / "saelens_batchtopk" / "peer_outputs.safetensors")
    for spec in (f"saelens:{root}", root):
        sae = load(spec)
        assert (sae.cfg.arch, sae.k, sae.cfg.threshold_ema) == ("batchtopk", 4, 0.5)
        got_codes, got_recon = _vlmfast_outputs(sae, rec["x"])
        assert_close(got_codes, rec["codes"])
        assert_close(got_recon, rec["recon"])
    # without the decoder-norm fold the codes would differ (the fold is tested)
    t = load_file(str(root / "sae_weights.safetensors"))
    pre = (rec["x"] - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    naive = pre.relu() * (pre > t["topk_threshold"].float())
    assert not torch.allclose(naive, rec["codes"], atol=1e-3)


def test_saelens_batchtopk_with_fractional_k_is_refused(tmp_path):
    root = shutil.copytree(FIXTURES / "saelens_batchtopk_training", tmp_path / "btk")
    _edit_json(root / "cfg.json", k=2.5)
    with pytest.raises(InputError, match=r"cfg\.json: config key 'k'=2\.5.*whole number"):
        load(f"saelens:{root}")


# ------------------------------------------------------------------ sparsify


@pytest.mark.parametrize("spec_form", ["run_and_hook", "hook_folder"])
def test_sparsify_matches_sparsify(spec_form):
    run = FIXTURES / "sparsify_run"
    spec = (
        f"sparsify:{run}:layers.8"
        if spec_form == "run_and_hook"
        else f"sparsify:{run / 'layers.8'}"
    )
    rec = _recorded(run / "layers.8" / "peer_outputs.safetensors")
    t = load_file(str(run / "layers.8" / "sae.safetensors"))
    pre = torch.relu((rec["x"] - t["b_dec"]) @ t["encoder.weight"].t() + t["encoder.bias"])
    codes = _topk_dense(pre, 4, relu=False)
    torch.testing.assert_close(codes, rec["codes"], **TOL)
    torch.testing.assert_close(codes @ t["W_dec"] + t["b_dec"], rec["recon"], **TOL)
    sae = load(spec)
    got_codes, got_recon = _vlmfast_outputs(sae, rec["x"])
    torch.testing.assert_close(got_codes, rec["codes"], **TOL)
    torch.testing.assert_close(got_recon, rec["recon"], **TOL)
    assert sae.cfg.hook == "layers.8"
    # A sparsify folder given without a prefix is recognised by its files.
    torch.testing.assert_close(_vlmfast_outputs(load(run / "layers.8"), rec["x"])[1], got_recon)
    # The other hook is a different SAE: the hook part of the spec is honoured.
    other = _vlmfast_outputs(load(f"sparsify:{run}:layers.9"), rec["x"])[1]
    assert not torch.allclose(other, rec["recon"], atol=1e-3)


def test_sparsify_run_without_hook_lists_hooks():
    with pytest.raises(InputError, match=r"layers\.8, layers\.9"):
        load(f"sparsify:{FIXTURES / 'sparsify_run'}")


# ------------------------------------------------------------------ saev


def _saev_formula(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """saev's SparseAutoencoder (schema 5): no b_dec subtracted, top-k without a ReLU."""
    t = torch.load(_saev_state(FIXTURES / "saev_topk.pt"), weights_only=True)
    codes = _topk_dense(x @ t["W_enc"] + t["b_enc"], 4, relu=False)
    return codes, codes @ t["W_dec"] + t["b_dec"]


def _saev_state(path: Path) -> io.BytesIO:
    with path.open("rb") as fd:
        fd.readline()
        return io.BytesIO(fd.read())


def test_saev_topk_matches_saev():
    rec = _recorded(FIXTURES / "saev_topk.outputs.safetensors")
    codes, recon = _saev_formula(rec["x"])
    torch.testing.assert_close(codes, rec["codes"], **TOL)
    torch.testing.assert_close(recon, rec["recon"], **TOL)
    sae = load(f"saev:{FIXTURES / 'saev_topk.pt'}")
    got_codes, got_recon = _vlmfast_outputs(sae, rec["x"])
    torch.testing.assert_close(got_codes, rec["codes"], **TOL)
    torch.testing.assert_close(got_recon, rec["recon"], **TOL)
    # Negative control: without folding b_dec into b_enc the codes differ.
    t = torch.load(_saev_state(FIXTURES / "saev_topk.pt"), weights_only=True)
    naive = TopKSAE(8, 16, 4)
    with torch.no_grad():
        naive.W_enc.copy_(t["W_enc"].t())
        naive.b_enc.copy_(t["b_enc"])
        naive.W_dec.copy_(t["W_dec"])
        naive.b_dec.copy_(t["b_dec"])
    assert not torch.allclose(_vlmfast_outputs(naive, rec["x"])[0], rec["codes"], atol=1e-3)


def test_saev_rows_with_fewer_than_k_positive_preactivations():
    """The documented difference: saev keeps negative top-k values, vlmfast keeps zeros."""
    x = torch.randn(4096, 8, generator=torch.Generator().manual_seed(9)) * 4
    codes, _ = _saev_formula(x)
    sae = load(f"saev:{FIXTURES / 'saev_topk.pt'}")
    got, _ = _vlmfast_outputs(sae, x)
    short = (codes < 0).any(dim=1)
    assert 0 < int(short.sum()) < len(x) // 2
    torch.testing.assert_close(got[~short], codes[~short], **TOL)
    torch.testing.assert_close(got[short], codes[short].relu(), **TOL)


# ------------------------------------------------------------------ ViT-Prisma


def test_prisma_topk_matches_prisma():
    """ViT-Prisma's pickled {"cfg", "state_dict"}, read without ViT-Prisma installed."""
    rec = _recorded(FIXTURES / "prisma_topk.outputs.safetensors")
    sae = load(f"prisma:{FIXTURES / 'prisma_topk.pt'}")
    got_codes, got_recon = _vlmfast_outputs(sae, rec["x"])
    torch.testing.assert_close(got_codes, rec["codes"], **TOL)
    torch.testing.assert_close(got_recon, rec["recon"], **TOL)
    assert sae.cfg.hook == "blocks.9.ln2.hook_normalized"
    w = (sae.W_enc.detach().t(), sae.b_enc.detach(), sae.W_dec.detach(), sae.b_dec.detach())
    codes = _topk_dense((rec["x"] - w[3]) @ w[0] + w[1], 4, relu=True)
    torch.testing.assert_close(codes, rec["codes"], **TOL)
    torch.testing.assert_close(codes @ w[2] + w[3], rec["recon"], **TOL)


# ------------------------------------------------------------------ vlmfast


def test_vlmfast_directory_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(5)
    sae = TopKSAE(8, 16, 4, input_scaling=True, b_dec_init="mean", hook="image.blocks.2.resid_post")
    sae.init_from_batch(torch.randn(32, 8, generator=g) * 3 + 1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(16, generator=g) * 0.2)
    sae.save(tmp_path / "sae")
    x = torch.randn(40, 8, generator=g) * 3 + 1
    want_codes, want_recon = _vlmfast_outputs(sae, x)
    for spec in (str(tmp_path / "sae"), tmp_path / "sae", f"saelens:{tmp_path / 'sae'}"):
        loaded = load(spec)
        codes, recon = _vlmfast_outputs(loaded, x)
        torch.testing.assert_close(codes, want_codes, **TOL)
        torch.testing.assert_close(recon, want_recon, **TOL)
    assert load(tmp_path / "sae").cfg.hook == "image.blocks.2.resid_post"
    (tmp_path / "sae" / "INCOMPLETE").write_text("unfinished\n")
    for spec in (tmp_path / "sae", f"saelens:{tmp_path / 'sae'}"):
        with pytest.raises(InputError, match="incomplete run"):
            load(spec)


# ------------------------------------------------------------------ bad input


def test_unsupported_architectures_are_named():
    cases = [
        (f"saelens:{FIXTURES / 'saelens_standard'}", "'standard'", "cfg.json"),
        (f"sparsify:{FIXTURES / 'sparsify_groupmax'}", "groupmax", "cfg.json"),
        (f"saev:{FIXTURES / 'saev_batchtopk.pt'}", "'BatchTopK'", "saev_batchtopk.pt"),
        (f"saev:{FIXTURES / 'saev_relu_pypi.pt'}", "'Relu", "saev_relu_pypi.pt"),
        (f"prisma:{FIXTURES / 'prisma_relu.pt'}", "activation_fn_str='relu'", "prisma_relu.pt"),
        (
            f"prisma:{FIXTURES / 'prisma_topk_layernorm.pt'}",
            "normalize_activations='layer_norm'",
            "prisma_topk_layernorm.pt",
        ),
    ]
    for spec, found, file in cases:
        with pytest.raises(UnsupportedSAEError) as info:
            load(spec)
        message = str(info.value)
        assert found in message and file in message and "top-k" in message, message


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_config_and_tensors_disagree(tmp_path):
    saelens = shutil.copytree(FIXTURES / "saelens_topk", tmp_path / "saelens")
    _edit_json(saelens / "cfg.json", d_sae=32)
    with pytest.raises(ShapeError, match=r"sae_weights\.safetensors: tensor 'W_enc'.*d_sae=32"):
        load(f"saelens:{saelens}")
    sparsify = shutil.copytree(FIXTURES / "sparsify_run" / "layers.8", tmp_path / "sparsify")
    _edit_json(sparsify / "cfg.json", d_in=12)
    with pytest.raises(ShapeError, match=r"sae\.safetensors: tensor 'encoder\.weight'.*d_in=12"):
        load(f"sparsify:{sparsify}")
    lines = (FIXTURES / "saev_topk.pt").read_bytes().split(b"\n", 1)
    header = json.loads(lines[0])
    header["cfg"]["d_sae"] = 24
    (tmp_path / "saev.pt").write_bytes(json.dumps(header).encode() + b"\n" + lines[1])
    with pytest.raises(ShapeError, match=r"saev\.pt: tensor 'W_enc'.*d_sae=24"):
        load(f"saev:{tmp_path / 'saev.pt'}")
    TopKSAE(8, 16, 4).save(tmp_path / "mine")
    _edit_json(tmp_path / "mine" / "cfg.json", d_sae=20)
    with pytest.raises(ShapeError, match=r"cfg\.json: config key 'd_sae'=20"):
        load(tmp_path / "mine")


def test_bad_specs():
    with pytest.raises(InputError, match="unknown kind 'nope'"):
        load("nope:somewhere")
    with pytest.raises(InputError, match="no such"):
        load(f"saev:{FIXTURES / 'missing.pt'}")
    with pytest.raises(InputError, match="no such directory"):
        load(FIXTURES / "missing_dir")
    assert parse_spec("sparsify:/a/run:layers.8") == ("sparsify", Path("/a/run"), "layers.8")
    assert parse_spec("out/sae") == ("vlmfast", Path("out/sae"), None)


def test_the_plain_reader_refuses_saelens_files_it_would_misread() -> None:
    root = Path(__file__).parent / "fixtures" / "saelens_batchtopk_training"
    with pytest.raises(InputError, match="saelens:"):
        TopKSAE.load(root)
    assert load(f"saelens:{root}").cfg.arch == "batchtopk"
