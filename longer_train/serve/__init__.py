"""Serving: encode a user once (`prefill`), then score many candidates against the cache (`score`)."""

from .kv_cache import UserCache, prefill, score

__all__ = ["UserCache", "prefill", "score"]
