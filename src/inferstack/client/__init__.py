"""Python clients: results as numpy arrays and pandas DataFrames."""

from inferstack.client.featurestore import (
    AsyncFeatureStoreClient,
    FeatureFrame,
    FeatureStoreClient,
    Query,
)

__all__ = ["AsyncFeatureStoreClient", "FeatureFrame", "FeatureStoreClient", "Query"]
