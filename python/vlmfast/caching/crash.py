"""Test-only crash injection of a cache run (``CacheConfig.crash_at``)."""

from __future__ import annotations

import os
import signal


class Crash:
    """SIGKILL at ``<batch>:<stage>`` (``merge:<stage>`` too).

    ``<batch>`` counts the batches this process writes (0 = its first), so that
    in a multi-rank run it means the same on every rank. The stages are the store's
    commit stages (``flushed``, ``attrs_written``) and the cache's own (``appended``,
    ``committed``, ``merge:written``, ``merge:committed``).
    """

    def __init__(self, spec: str | None) -> None:
        self.batch, self.stage = "", ""
        if spec:
            self.batch, _, self.stage = spec.partition(":")
        self.current = ""

    def __call__(self, stage: str) -> None:
        if self.batch and self.current == self.batch and stage == self.stage:
            os.kill(os.getpid(), signal.SIGKILL)
