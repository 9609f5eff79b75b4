"""Builds a small run directory (the layout ``vlmfast run`` writes) from library calls.

The report tests render it; it does not depend on the pipeline package. Every stage is
real but tiny: the bundled ``synthetic:tiny`` pair, a few hundred synthetic samples,
64-latent SAEs trained for a few hundred steps, traces/attribution over 4 pairs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from vlmfast.report.run_dir import STAGES


def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=float, allow_nan=True))


def _manifest(run: Path, stage: str, seconds: float) -> dict[str, Any]:
    entry = {
        "name": stage,
        "key": f"key-{stage}",
        "status": "ran",
        "reason": "",
        "seconds": seconds,
    }
    _dump(run / stage / "manifest.json", {"stage": stage, "schema_version": 1, "key": entry["key"]})
    return entry


def build_run(run: Path, *, n_samples: int = 200, skip: tuple[str, ...] = ()) -> Path:
    """Writes ``run`` (run.json + every stage not in ``skip``); returns ``run``."""
    import numpy as np

    import vlmfast as vf
    from vlmfast.caching import CacheConfig, run_cache
    from vlmfast.causal import attribute, concept_intervention, top_units, trace
    from vlmfast.causal.core.evalset import EvalSet
    from vlmfast.data import open_source
    from vlmfast.pipeline.stages.score import ground_truth_table
    from vlmfast.sae import SAETrainer, TopKSAE, TrainConfig, train
    from vlmfast.sae.data import store_batches
    from vlmfast.scoring.from_store import score_store

    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    pair = vf.load_pair("synthetic:tiny")
    n_img, n_txt = pair.config.image.layers, pair.config.text.layers
    hooks = {
        "image": f"image.blocks.{n_img - 1}.resid_post",
        "text": f"text.blocks.{n_txt - 1}.resid_post",
    }
    neuron_hook = f"image.blocks.{n_img - 1}.mlp.post"
    data = f"synthetic:n={n_samples},seed=5"
    stages: list[dict[str, Any]] = []

    t0 = time.perf_counter()
    store = run_cache(
        CacheConfig(
            model="synthetic:tiny",
            data=data,
            hooks=[*hooks.values(), neuron_hook, "image.embed", "text.embed"],
            out=run / "cache" / "store.zarr",
            positions="all",
            batch_size=128,
            overwrite=True,
            chunk_rows=1024,
            progress=False,
        ),
        log=lambda _m: None,
    )
    from vlmfast.data.synthetic.evaluate import evaluate_model

    quality = evaluate_model(pair, pair.tokenize, seed=1000, n=50)
    _dump(run / "cache" / "result.json", {"store": "store.zarr", "quality": quality})
    stages.append(_manifest(run, "cache", round(time.perf_counter() - t0, 1)))

    t0 = time.perf_counter()
    saes: dict[str, Any] = {}
    for mod, hook in hooks.items():
        torch.manual_seed(0)
        sae = TopKSAE(d_in=int(store.width(hook)), n_latents=64, k=8, hook=hook)
        trainer = SAETrainer(sae, TrainConfig(seed=0), total_steps=150)
        train(store_batches(store, hook, 256, rows="tokens", seed=0), [trainer])
        sae.save(run / "train-sae" / mod)
        saes[mod] = sae
    stages.append(_manifest(run, "train-sae", round(time.perf_counter() - t0, 1)))

    if "score" not in skip:
        t0 = time.perf_counter()
        results = {}
        # the pipeline's score/result.json layout (vlmfast.pipeline.stages.score)
        out: dict[str, Any] = {"modalities": {}, "neurons": {}}
        for mod, hook in hooks.items():
            res = score_store(store, hook, sae=saes[mod], tokens="max")
            res.save(run / "score" / mod)
            results[mod] = res
            entry = res.summary()["modalities"][mod]
            out["modalities"][mod] = {**entry, "hook": hook, "source": "sae", "scores": mod}
        neurons = score_store(store, neuron_hook, tokens="max")
        neurons.save(run / "score" / "neurons" / neuron_hook)
        out["neurons"][neuron_hook] = {
            mod: {**e, "hook": neuron_hook, "source": "units", "scores": f"neurons/{neuron_hook}"}
            for mod, e in neurons.summary()["modalities"].items()
        }
        out["ground_truth"] = ground_truth_table(results, 0.95, lambda _m: None)
        from vlmfast.crossmodal.relations import RelationProbeConfig
        from vlmfast.scoring.relation_probe import relation_ground_truth

        out["ground_truth"]["bound_relations"] = relation_ground_truth(
            store, hooks, saes=saes, config=RelationProbeConfig(n_null=20)
        )
        _dump(run / "score" / "result.json", out)
        stages.append(_manifest(run, "score", round(time.perf_counter() - t0, 1)))

    clean = list(open_source("synthetic:n=4,seed=9"))
    images = pair.preprocess([r.image for r in clean])
    texts = pair.tokenize([r.caption for r in clean])
    if "trace" not in skip:
        t0 = time.perf_counter()
        tr = {
            tower: trace(pair, images, texts, tower, kinds=("resid", "heads"), null=20).to_dict()
            for tower in ("image", "text")
        }
        _dump(run / "trace" / "result.json", tr)
        stages.append(_manifest(run, "trace", round(time.perf_counter() - t0, 1)))
    if "attribute" not in skip:
        t0 = time.perf_counter()
        # image-shift: each image replaced by another pair's (the pipeline's default)
        at = attribute(pair, images, texts, images.roll(1, 0), None, components=("resid", "heads"))
        (run / "attribute").mkdir(parents=True, exist_ok=True)
        (run / "attribute" / "result.json").write_text(at.to_json())
        stages.append(_manifest(run, "attribute", round(time.perf_counter() - t0, 1)))
    if "circuit" not in skip:
        from vlmfast.causal import find_circuit

        t0 = time.perf_counter()
        circ: dict[str, Any] = {}
        from vlmfast.pipeline.stages.circuit import concept_pairs, corrupt_pair_inputs

        for concept in ("red",):
            # the pipeline's text-swap corruption: "red" -> the next color in each caption
            recs = concept_pairs("synthetic:n=200,seed=9", concept, 6)
            inp = corrupt_pair_inputs(pair, recs, concept, "text-swap", 0, 1.0)
            args = (pair, inp["images"], inp["texts"], None, inp["corrupt_texts"])
            c = find_circuit(*args, components=("heads",), null=20)
            c.edges(*args)
            circ[concept] = json.loads(c.to_json())
        _dump(run / "circuit" / "result.json", circ)
        stages.append(_manifest(run, "circuit", round(time.perf_counter() - t0, 1)))
    if "intervene" not in skip and "score" not in skip:
        t0 = time.perf_counter()
        ev = EvalSet.synthetic(96, seed=3, pair=pair)
        vocab = [c for c in ev.concepts if ev.kinds[ev.concepts.index(c)] == "color"]
        iv: dict[str, Any] = {"ablate": {}, "steer": {}}
        from vlmfast.causal import load_scores

        scores = load_scores(run / "score" / "neurons" / neuron_hook)
        for concept in ("red", "blue"):
            units = top_units(scores, concept, n=10)
            for mode in ("ablate", "steer"):
                r = concept_intervention(
                    pair,
                    units,
                    mode=mode,
                    ablation="mean",
                    alpha=2.0 if mode == "steer" else None,
                    eval_data=ev,
                    concepts=vocab,
                    null=20,
                    seed=0,
                )
                iv[mode][concept] = r.to_dict()
        _dump(run / "intervene" / "result.json", iv)
        stages.append(_manifest(run, "intervene", round(time.perf_counter() - t0, 1)))
    if "cross-modal" not in skip:
        t0 = time.perf_counter()
        _dump(run / "cross-modal" / "result.json", _crossmodal(run, pair, data))
        stages.append(_manifest(run, "cross-modal", round(time.perf_counter() - t0, 1)))
    for st in STAGES:
        if not any(s["name"] == st for s in stages):
            stages.append(
                {
                    "name": st,
                    "key": None,
                    "status": "skipped",
                    "reason": "not configured",
                    "seconds": 0.0,
                }
            )
    _dump(
        run / "run.json",
        {
            "config": {"model": "synthetic:tiny", "data": data, "hooks": hooks},
            "config_hash": "0123456789abcdef",
            "versions": {
                "vlmfast": vf.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
            },
            "stages": stages,
        },
    )
    return run


def _crossmodal(run: Path, pair: Any, data: str) -> dict[str, Any]:
    """The cross-modal stage's result on the cached embeddings (small settings)."""
    from vlmfast.pipeline import PipelineConfig
    from vlmfast.pipeline.context import StageContext
    from vlmfast.pipeline.stages import crossmodal

    cfg = PipelineConfig()
    cfg.data.spec = data
    cm = cfg.crossmodal
    cm.n_latents, cm.k, cm.steps, cm.n_null, cm.n_boot = 32, 4, 60, 10, 30
    cm.grounding_images, cm.grounding_heads = 8, 1
    cm.fusion_pairs, cm.fusion_units = 64, 2
    cm.two_tower_concepts, cm.two_tower_pairs = ["red"], 4  # the browser test draws one
    folder = run / "cross-modal"
    folder.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        "cross-modal", cfg, run, folder, lambda _m: None, progress=False, cache={"pair": pair}
    )
    return crossmodal.run(ctx)


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/report/fixture_run.py DIR
    import sys

    t = time.perf_counter()
    build_run(Path(sys.argv[1]))
    print(f"built in {time.perf_counter() - t:.1f} s")
