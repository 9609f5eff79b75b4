"""Config dataclasses and keyword options: one call form built from the other.

A capability with many options takes a config dataclass (``find_circuit(...,
config=CircuitConfig(...))``) and keeps its keyword form (``find_circuit(...,
target=0.9)``); keywords given with a config replace its fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")


def with_options(cls: type[C], config: C | None, options: Mapping[str, Any], what: str) -> C:
    """``config`` (default ``cls()``) with ``options`` replacing its fields.

    TypeError (as for any unexpected keyword argument) names unknown options and a config
    of the wrong type.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(
            f"{what}() got unexpected keyword arguments {unknown}; the options are {sorted(names)}"
        )
    if config is not None and not isinstance(config, cls):
        raise TypeError(f"{what}() config must be a {cls.__name__}, got {type(config).__name__}")
    base = config if config is not None else cls()
    return dataclasses.replace(base, **options) if options else base  # type: ignore[type-var]


__all__ = ["with_options"]
