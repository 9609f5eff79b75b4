"""PEP 562 lazy exports: a package names its public attributes without importing them.

``import vlmfast.sae`` (or ``.causal``, ``.caching``, ``.crossmodal``) stays cheap -- no
torch -- until a name is used, and the CLI's parser and the pipeline's config checks
never pay for what they don't call.

    __getattr__, __dir__ = lazy_exports(__name__, {"TopKSAE": "vlmfast.sae.model"}, __all__)

A table value is a module path, absolute (``vlmfast.x.y``) or relative to the package
(``core.metrics``); ``submodules`` are names of the package's own modules served as
attributes. A name, once loaded, is stored in the package's namespace.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str,
    table: Mapping[str, str],
    public: Iterable[str],
    *,
    submodules: Iterable[str] = (),
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``; unknown names raise AttributeError."""
    subs = frozenset(submodules)
    listed = sorted({*public, *subs})

    def module_of(path: str) -> str:
        return path if path.startswith("vlmfast.") else f"{package}.{path}"

    def getattr_(name: str) -> Any:
        if name in subs:
            return importlib.import_module(f"{package}.{name}")
        path = table.get(name)
        if path is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of(path)), name)
        setattr(sys.modules[package], name, value)
        return value

    def dir_() -> list[str]:
        return listed

    return getattr_, dir_


__all__ = ["lazy_exports"]
