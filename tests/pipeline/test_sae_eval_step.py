"""The train-sae stage's evaluation step: eval.json per modality SAE, headline in the result."""

from __future__ import annotations

import json

import torch

from vlmfast.pipeline.config import PipelineConfig
from vlmfast.pipeline.context import StageContext
from vlmfast.pipeline.stages.sae_eval import EVAL_FILE, evaluate_saes
from vlmfast.report.run_dir import RunDir
from vlmfast.report.sec_sae_eval import sae_eval
from vlmfast.sae import TopKSAE

HOOK = "image.blocks.1.resid_post"


def test_evaluate_saes_writes_eval_json_the_report_reads(tmp_path):
    import vlmfast as vf
    from vlmfast.caching import CacheConfig, run_cache

    torch.set_num_threads(1)
    store = run_cache(
        CacheConfig(
            model="synthetic:tiny", data="synthetic:n=16,seed=3", hooks=[HOOK],
            out=tmp_path / "run" / "cache" / "store.zarr", positions="all", batch_size=16,
            chunk_rows=256, progress=False,
        ),
        log=lambda _m: None,
    )  # fmt: skip
    stage = tmp_path / "run" / "train-sae"
    sae = TopKSAE(int(store.width(HOOK)), 32, 4, hook=HOOK, rows="all")
    sae.init_from_batch(store.read(HOOK).float())
    sae.save(stage / "image")
    cfg = PipelineConfig()
    cfg.data.spec = "synthetic:n=16,seed=4"
    lines: list[str] = []
    ctx = StageContext(
        "train-sae", cfg, tmp_path / "run", stage, lines.append, progress=False,
        cache={"pair": vf.load_pair("synthetic:tiny").eval()},
    )  # fmt: skip
    trained = {"image": {"hook": HOOK, "checkpoint": "image"}, "hooks": {}}
    out = evaluate_saes(ctx, store, trained)
    assert out is trained and "eval" not in out["hooks"]
    head = out["image"]["eval"]
    assert set(head) >= {"fvu", "l0_mean", "loss_recovered", "kl_spliced"}
    suite = json.loads((stage / "image" / EVAL_FILE).read_text())
    assert suite["split"] == "train" and suite["downstream"]["n_pairs"] == 16
    assert suite["reconstruction"]["overall"]["n_rows"] == store.n_rows(HOOK)
    assert any("SAE suite" in line for line in lines)
    (stage / "manifest.json").write_text("{}")
    sec = sae_eval(RunDir.open(tmp_path / "run"))
    assert sec["status"] == "ran" and len(sec["tables"]) == 2
