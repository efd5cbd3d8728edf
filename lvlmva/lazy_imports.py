"""Lazy package exports (PEP 562): a package names each module it re-exports from and the names
it takes from it, and a module is imported on first use, so importing the package stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, modules: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], Any]]:
    """The `__all__` and the module-level `__getattr__` of `package`, which re-exports the names
    `modules[module]` of each module: a name is imported from its module when first asked for;
    any other name is an AttributeError."""
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return sorted(home), __getattr__
