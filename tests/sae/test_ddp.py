"""Data parallel: 2 gloo CPU processes on half batches == 1 process on the full batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlmfast.sae import SAEConfig, SAETrainer, TrainConfig, build_sae, train

D, F, K, B, STEPS = 8, 32, 3, 64, 6


def _global_batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, D, generator=g) + 0.5 for _ in range(STEPS)]


ARCHS = ("topk", "batchtopk", "matryoshka", "jumprelu")


def _make_trainer(arch: str = "topk") -> SAETrainer:
    # dead_tokens small so AuxK (and its all-reduced dead mask) takes part
    groups = [8, 16, 8] if arch == "matryoshka" else None
    cfg = SAEConfig(D, F, K, arch=arch, groups=groups, dead_tokens=2 * B, input_scaling=True)
    sae = build_sae(cfg)
    with torch.no_grad():
        sae.b_enc[:8] = -1.5  # these latents lose the top-k, die, and feed AuxK
    return SAETrainer(sae, TrainConfig(lr=1e-2, warmup_steps=1), total_steps=STEPS)


def _worker(rank: int, world: int, init_file: str, out_file: str, arch: str) -> None:
    import os

    from vlmfast.process_group import _loopback_interface, leave_process_group

    torch.set_num_threads(1)
    # as in join_process_group: gloo on loopback (the host name may resolve to an
    # address the peer cannot use), and a barrier before teardown (a rank that
    # tore the group down while the other still worked was seen to abort)
    loopback = _loopback_interface()
    if loopback is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ok = False
    try:
        trainer = _make_trainer(arch)
        half = B // world
        local = [b[rank * half : (rank + 1) * half] for b in _global_batches()]
        train(local, [trainer])
        if rank == 0:
            torch.save(
                {
                    **{n: p.detach() for n, p in trainer.sae.named_parameters()},
                    "tsf": trainer.tokens_since_fired,
                },
                out_file,
            )
        ok = True
    finally:
        leave_process_group(ok)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_two_process_gloo_matches_single_process(tmp_path, arch):
    single = _make_trainer(arch)
    train(_global_batches(), [single])
    if arch != "jumprelu":  # JumpReLU has no AuxK: its dead latents recover by thresholds
        assert bool(single.dead_mask().any())

    out_file = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out_file, arch), nprocs=2, join=True)
    got = torch.load(out_file)
    for name, param in single.sae.named_parameters():
        torch.testing.assert_close(got[name], param.detach(), rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(got["tsf"], single.tokens_since_fired)
