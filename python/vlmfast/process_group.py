"""Joining and leaving the ``torchrun`` process group, shared by the multi-rank commands."""

from __future__ import annotations

import os

_LOOPBACK_ADDRS = frozenset({"127.0.0.1", "localhost", "::1"})


def _loopback_interface() -> str | None:
    """Name of the loopback network interface (``lo`` on Linux, ``lo0`` on macOS), if any."""
    import socket

    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in names if n in ("lo", "lo0")), None)


def join_process_group(device: str) -> tuple[int, int]:
    """Joins the torchrun process group (nccl on CUDA, gloo on CPU); (0, 1) without torchrun.

    On CUDA the rank's device is ``LOCAL_RANK``, set before nccl starts.

    A single-node CPU run (``MASTER_ADDR`` on loopback) pins gloo to the loopback interface:
    otherwise gloo binds to whatever the host name resolves to, which in containers and
    sandboxes is often an address no peer can reach.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if device == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if (
            backend == "gloo"
            and "GLOO_SOCKET_IFNAME" not in os.environ
            and os.environ.get("MASTER_ADDR", "127.0.0.1") in _LOOPBACK_ADDRS
        ):
            loopback = _loopback_interface()
            if loopback is not None:
                os.environ["GLOO_SOCKET_IFNAME"] = loopback
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def leave_process_group(ok: bool) -> None:
    """Waits for every rank (after a clean run) and tears the process group down.

    Without this, a rank that finishes first (every rank but 0 skips the final save) exits
    with the gloo group still live, and its interpreter can abort at shutdown.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if ok:
        dist.barrier()
    dist.destroy_process_group()
