"""A race, side by side: vlmfast, SAELens and sparsify train a top-k SAE on the same rows.

Every contestant trains on the same cached planted rows (``vlmfast.sae.planted``,
d=768, so FVU means something), with the same width, k, batch, learning rate, warm-up
then constant schedule, number of steps and seed, each with its dead-latent loss on as
its users run it (vlmfast: AuxK 1/32; SAELens ``TopKTrainingSAE``: aux loss 1.0 over
its dead window; sparsify: AuxK with ``auxk_alpha`` 1/32, set on: 1.3.3 defaults it to 0). Each
run is its own subprocess; peers run from a throwaway virtualenv this script makes
(default ``/tmp/vlmfast-peers``; never the project's environment) with pinned
versions from PyPI. Runs are interleaved (the order rotates each repeat) and the
table shows medians: on a shared machine the timings are noisy.

Reported per contestant: tokens/s of the training steps (the first two steps and the
evaluation excluded), peak RSS of its process (MiB; includes the rows it reads, the
same for all), and FVU on held-out rows after the same number of tokens.

    python benches/bench_sae_peers.py                 # the full race (d=768, 16,384 latents)
    python benches/bench_sae_peers.py --quick         # a smoke run (tiny, one repeat)
    python benches/bench_sae_peers.py --only vlmfast  # no peer install
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PEER_PINS = {"saelens": "sae-lens==6.54.12", "sparsify": "eai-sparsify==1.3.3"}
CONTESTANTS = ("vlmfast", "saelens", "sparsify")
HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------- rows
def make_rows(spec: dict[str, Any], cache: Path) -> Path:
    """Writes the planted pool + held-out rows once (float32 raw file); returns its path."""
    import torch

    from vlmfast.sae.planted import PlantedConfig, PlantedGenerator

    key = f"planted-d{spec['d']}-f{spec['n_features']}-b{spec['batch']}x{spec['pool']}-h{spec['held']}-s{spec['seed']}"
    path = cache / f"{key}.f32"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    gen = PlantedGenerator(
        PlantedConfig(d=spec["d"], n_features=spec["n_features"], seed=spec["seed"])
    )
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        left = spec["batch"] * spec["pool"] + spec["held"]
        while left > 0:
            n = min(4096, left)
            f.write(gen.sample(n).rows.to(torch.float32).numpy().tobytes())
            left -= n
    tmp.rename(path)
    return path


def read_rows(path: str, d: int, start: int, n: int) -> Any:
    """``[n, d]`` float32 rows from ``start`` (plain reads, no mmap: RSS stays honest)."""
    import numpy as np
    import torch

    with open(path, "rb") as f:
        f.seek(start * d * 4)
        arr = np.fromfile(f, dtype=np.float32, count=n * d)
    return torch.from_numpy(arr.reshape(n, d))


# -------------------------------------------------------------------------- workers
def _vlmfast_setup(spec: dict[str, Any]) -> tuple[Any, Any, Any]:
    from vlmfast.sae import SAETrainer, TopKSAE, TrainConfig

    init = {"encoder_init_norm": spec["encoder_init_norm"]} if "encoder_init_norm" in spec else {}
    sae = TopKSAE(spec["d"], spec["latents"], spec["k"], seed=spec["seed"], **init)
    cfg = TrainConfig(lr=spec["lr"], warmup_steps=spec["warmup"], decay_start=1.0)
    trainer = SAETrainer(sae, cfg, total_steps=spec["steps"])
    return trainer.step, sae.forward, None


def _saelens_setup(spec: dict[str, Any]) -> tuple[Any, Any, Any]:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=spec["d"], d_sae=spec["latents"], k=spec["k"], device="cpu")
    )
    cfg = SAETrainerConfig(
        total_training_samples=spec["steps"] * spec["batch"],
        train_batch_size_samples=spec["batch"],
        lr=spec["lr"],
        lr_warm_up_steps=spec["warmup"],
        lr_end=spec["lr"],
        lr_scheduler_name="constant",
        device="cpu",
    )
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))

    def step(x: Any) -> None:
        trainer.step(x)
        trainer.n_training_steps += 1  # what SAETrainer.fit does after each step

    return step, sae.forward, None


def _sparsify_setup(spec: dict[str, Any]) -> tuple[Any, Any, Any]:
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(
        spec["d"], SparseCoderConfig(num_latents=spec["latents"], k=spec["k"]), device="cpu"
    )
    opt = torch.optim.Adam(sae.parameters(), lr=spec["lr"])
    warm = max(1, spec["warmup"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    since_fired = torch.zeros(spec["latents"], dtype=torch.long)
    state = {"first": True}

    def step(x: Any) -> None:  # sparsify.Trainer's step, without the model hooks
        if state["first"]:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
            state["first"] = False
        sae.set_decoder_norm_to_unit_norm()
        dead = since_fired > 10_000_000
        out = sae(x, dead_mask=dead)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sched.step()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[out.latent_indices.flatten()] = 0

    return step, lambda x: sae(x).sae_out, None


SETUPS = {"vlmfast": _vlmfast_setup, "saelens": _saelens_setup, "sparsify": _sparsify_setup}


def run_worker(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Trains contestant ``name`` on the cached rows; returns its measurements."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    step, recon_fn, _ = SETUPS[name](spec)
    b, d = spec["batch"], spec["d"]
    pool = read_rows(spec["rows"], d, 0, b * spec["pool"])
    times = []
    for i in range(spec["steps"]):
        x = pool[(i % spec["pool"]) * b : (i % spec["pool"] + 1) * b].clone()
        t0 = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t0)
    held = read_rows(spec["rows"], d, b * spec["pool"], spec["held"])
    with torch.no_grad():
        err = sum(float((recon_fn(c) - c).pow(2).sum()) for c in held.split(2048))
    var = float((held.double() - held.double().mean(0)).pow(2).sum())
    timed = times[2:] or times
    return {
        "contestant": name,
        "tokens_per_s": b * len(timed) / sum(timed),
        "median_step_s": statistics.median(timed),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "fvu_held_out": err / var,
        "tokens": b * spec["steps"],
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------- the driver
def ensure_peers_env(env: Path, install: bool) -> Path:
    """``env/bin/python`` with the pinned peers (created and installed when missing)."""
    python = env / "bin" / "python"
    probe = [str(python), "-c", "import sae_lens, sparsify"]
    if python.exists():
        # cwd outside the repository: its kernels/ folder would shadow the 'kernels' package
        run = subprocess.run(probe, capture_output=True, env=_peer_env(1), cwd=env.parent)
        if run.returncode == 0:
            return python
    if not install:
        raise SystemExit(f"no peers in {env}: run without --no-install to create it")
    print(
        f"creating {env} and installing {', '.join(PEER_PINS.values())} (minutes) ...", flush=True
    )
    subprocess.run(
        [sys.executable, "-m", "venv", str(env)], check=True
    )  # a new env; ours untouched
    pip = [str(python), "-m", "pip", "install", "-q", *PEER_PINS.values()]
    subprocess.run(pip, check=True)
    return python


def _peer_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        SPARSIFY_DISABLE_TRITON="1",  # sparsify's Triton decoder has no CPU driver
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="disabled",
    )
    return env


def _run_one(name: str, python: str, spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [python, str(HERE), "--worker", name, "--spec", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_peer_env(spec["threads"]))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise SystemExit(f"{name} worker failed (rc {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len("RESULT ") :])


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians per contestant over the repeats, plus the ratio to the faster peer."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["contestant"] for r in runs):
        mine = [r for r in runs if r["contestant"] == name]
        out[name] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
            "tokens_per_s_all": [round(r["tokens_per_s"], 1) for r in mine],
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in mine),
            "fvu_held_out": statistics.median(r["fvu_held_out"] for r in mine),
            "tokens": mine[0]["tokens"],
            "repeats": len(mine),
        }
    peers = [v["tokens_per_s"] for k, v in out.items() if k != "vlmfast"]
    if "vlmfast" in out and peers and max(peers) > 0:
        out["vlmfast"]["speedup_vs_fastest_peer"] = out["vlmfast"]["tokens_per_s"] / max(peers)
    return out


def markdown(summary: dict[str, dict[str, Any]], spec: dict[str, Any]) -> str:
    """The race as a markdown table."""
    head = (
        f"d={spec['d']}, {spec['latents']:,} latents, k={spec['k']}, batch {spec['batch']:,}, "
        f"{spec['steps']} steps, lr {spec['lr']:g}, {spec['threads']} threads; medians of "
        f"{spec['repeats']} interleaved repeats (shared machine: timings are noisy)\n\n"
    )
    rows = [
        "| contestant | tokens/s | peak RSS (MiB) | held-out FVU at equal tokens |",
        "|---|---:|---:|---:|",
    ]
    for name, v in summary.items():
        rows.append(
            f"| {name} | {v['tokens_per_s']:,.0f} | {v['peak_rss_mib']:,.0f} | {v['fvu_held_out']:.3f} |"
        )
    ratio = summary.get("vlmfast", {}).get("speedup_vs_fastest_peer")
    tail = f"\n\nvlmfast / fastest peer: {ratio:.2f}x tokens/s" if ratio else ""
    return head + "\n".join(rows) + tail


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--latents", type=int, default=16_384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-features", type=int, default=4096, help="true features of the planted set")
    p.add_argument("--pool", type=int, default=32, help="distinct training batches (cycled)")
    p.add_argument("--held", type=int, default=8192, help="held-out rows for the FVU")
    p.add_argument("--only", default=",".join(CONTESTANTS))
    p.add_argument(
        "--encoder-init-norm",
        type=float,
        default=None,
        help="vlmfast's initial encoder row norm (default: SAEConfig's; 1.0: tied to the decoder)",
    )
    p.add_argument("--peers-env", type=Path, default=Path("/tmp/vlmfast-peers"))
    p.add_argument("--no-install", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny smoke run, one repeat")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: print)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.latents, args.batch, args.steps = 2048, 256, 8
        args.repeats, args.pool, args.held, args.n_features, args.warmup = 1, 4, 1024, 512, 2
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args.worker, json.loads(args.spec))
        print("RESULT " + json.dumps(result), flush=True)
        return result
    names = [n for n in args.only.split(",") if n]
    bad = sorted(set(names) - set(CONTESTANTS))
    if bad:
        raise SystemExit(f"--only: unknown contestant(s) {bad}; choose from {CONTESTANTS}")
    spec = {
        k: getattr(args, k)
        for k in (
            "d",
            "latents",
            "k",
            "batch",
            "steps",
            "lr",
            "warmup",
            "seed",
            "threads",
            "repeats",
            "pool",
            "held",
        )
    }
    spec["n_features"] = args.n_features
    if args.encoder_init_norm is not None:
        spec["encoder_init_norm"] = args.encoder_init_norm
    spec["rows"] = str(make_rows(spec, args.peers_env.parent / "vlmfast-peers-rows"))
    pythons = {"vlmfast": sys.executable}
    if set(names) - {"vlmfast"}:
        peer_python = str(ensure_peers_env(args.peers_env, not args.no_install))
        pythons.update(saelens=peer_python, sparsify=peer_python)
    runs = []
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: interleaved
        for name in order:
            runs.append(_run_one(name, pythons[name], spec))
            print(
                f"repeat {r} {name}: {runs[-1]['tokens_per_s']:,.0f} tok/s, FVU {runs[-1]['fvu_held_out']:.4f}",
                flush=True,
            )
    summary = summarise(runs)
    report = {"spec": spec, "summary": summary, "runs": runs, "markdown": markdown(summary, spec)}
    print(report["markdown"])
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
