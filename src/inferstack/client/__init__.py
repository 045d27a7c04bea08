"""Python clients: results as numpy arrays and pandas DataFrames."""

from inferstack.client.featurestore import (
    AsyncFeatureStoreClient,
    FeatureFrame,
    FeatureStoreClient,
)
from inferstack.client.inferflow import AsyncInferflowClient, InferflowClient, Scores
from inferstack.client.interactions import (
    AsyncInteractionsClient,
    EventHistory,
    InteractionsClient,
    SweepCounts,
)
from inferstack.core.events import EventBatch
from inferstack.core.queries import Query

__all__ = [
    "AsyncFeatureStoreClient",
    "AsyncInferflowClient",
    "AsyncInteractionsClient",
    "EventBatch",
    "EventHistory",
    "FeatureFrame",
    "FeatureStoreClient",
    "InferflowClient",
    "InteractionsClient",
    "Query",
    "Scores",
    "SweepCounts",
]
