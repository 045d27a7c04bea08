"""Row caches: the interface the feature store owns, and one adapter per backing system."""

from inferstack.featurestore.cache.base import MISS, RowCache

__all__ = ["MISS", "RowCache"]
