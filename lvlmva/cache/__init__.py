"""Content-addressed on-disk cache of Critic and Judge answers."""

from lvlmva.cache import verdict_cache
from lvlmva.cache.verdict_cache import *  # noqa: F403

__all__ = verdict_cache.__all__
