"""Content-addressed on-disk cache of Critic and Judge answers."""

from lvlmva.cache.verdict_cache import (
    CachedResponse,
    CacheStats,
    Lookup,
    SingleFlight,
    Source,
    VerdictCache,
    cache_key,
    canonical_sha256,
    default_cache_dir,
)

__all__ = [
    "CacheStats",
    "CachedResponse",
    "Lookup",
    "SingleFlight",
    "Source",
    "VerdictCache",
    "cache_key",
    "canonical_sha256",
    "default_cache_dir",
]
