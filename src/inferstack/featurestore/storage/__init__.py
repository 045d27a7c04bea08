"""Row storage: the interface the feature store owns, and one adapter per backing system."""

from inferstack.featurestore.storage.base import FeatureStorage

__all__ = ["FeatureStorage"]
