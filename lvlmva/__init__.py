"""lvlm-va: align small vision models with human domain knowledge, using an LVLM as critic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AlignResult", "align", "align_sync"]

if TYPE_CHECKING:
    from lvlmva.api import AlignResult, align, align_sync


def __getattr__(name: str) -> Any:  # lazy: `import lvlmva` stays cheap
    if name in __all__:
        from lvlmva import api

        return getattr(api, name)
    raise AttributeError(f"module 'lvlmva' has no attribute {name!r}")
