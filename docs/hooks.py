"""MkDocs hooks: regenerate the reference pages before each build (see gen_reference)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from gen_reference import write_reference  # noqa: E402


def on_pre_build(config: Any, **_: Any) -> None:
    write_reference(Path(config["docs_dir"]))
