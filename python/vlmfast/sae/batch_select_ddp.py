"""BatchTopK over the global batch of a data-parallel run.

BatchTopK keeps the ``k * N`` largest pre-activations of the batch. Under data parallelism
the batch is the union of every rank's rows, so each rank must keep exactly the entries
that one process would keep on the concatenated batch (ranks in order): the threshold is
the ``k * N_total``-th largest value over all ranks, and ties at it go to the lowest global
flat position, which is rank order and then the rank's own flat order. Exchanged per step:
each rank's ``k * N_total`` largest values and three small counts.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vlmfast.ops.flat_codes import FlatCodes, from_positions
from vlmfast.sae import distributed as ddp


def global_batch_topk_select(pre: torch.Tensor, k: int) -> FlatCodes:
    """This rank's share of the global batch's top ``k * N_total`` entries of ``pre [N, M]``.

    Returns:
        Flat codes of the selected entries, in ascending flat position (values: the
        pre-activations), equal to the rows' part of a one-process selection.
    """
    n, m = pre.shape
    n_total = ddp.total_rows(n)
    want = k * n_total
    flat = pre.flatten()
    local_top = flat.topk(min(want, flat.numel())).values
    pooled = ddp.all_gather_rows(local_top[:, None])[:, 0]
    if pooled.numel() <= want:
        keep = torch.arange(flat.numel(), device=pre.device)
        return from_positions(keep, flat[keep], n, m)
    cut = pooled.topk(want).values[-1]
    above = (flat > cut).nonzero()[:, 0]
    equal = (flat == cut).nonzero()[:, 0]
    counts = torch.tensor([above.numel(), equal.numel()], dtype=torch.int64)
    per_rank = [torch.zeros(2, dtype=torch.int64) for _ in range(ddp.world_size())]
    dist.all_gather(per_rank, counts)
    n_above = sum(int(c[0]) for c in per_rank)
    ties_before = sum(int(c[1]) for c in per_rank[: ddp.rank()])
    take = max(0, min(equal.numel(), want - n_above - ties_before))
    keep = torch.cat([above, equal[:take]]).sort().values
    return from_positions(keep, flat[keep], n, m)


__all__ = ["global_batch_topk_select"]
