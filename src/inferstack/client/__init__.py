"""Python clients: results as numpy arrays and pandas DataFrames."""

from inferstack.client.featurestore import (
    AsyncFeatureStoreClient,
    FeatureFrame,
    FeatureStoreClient,
    Query,
)
from inferstack.client.inferflow import AsyncInferflowClient, InferflowClient, Scores

__all__ = [
    "AsyncFeatureStoreClient",
    "AsyncInferflowClient",
    "FeatureFrame",
    "FeatureStoreClient",
    "InferflowClient",
    "Query",
    "Scores",
]
