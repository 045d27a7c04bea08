"""What one request may ask for, whatever its transport: limits on the things whose cost
grows with the request (queries, key columns, selectors, features returned, event batches,
events), checked before the work they would cost (decoding included), so one request within
them cannot stall a worker's event loop for long. A request over one is RESOURCE_EXHAUSTED
naming the limit. The number of keys per request is a setting (max_keys); these are not:
each sits well above what a ranking or personalisation call needs."""

from __future__ import annotations

from inferstack.core.errors import ResourceExhaustedError

MAX_QUERIES_PER_BATCH = 100  # queries of one RetrieveBatch (a ranking call needs a few)
MAX_KEY_COLUMNS = 64  # key columns of one query or Persist; inputs of one Infer context
MAX_SELECTORS = 1_000  # feature selectors of one query
MAX_RETURN_FEATURES = 1_000  # return_features of one Infer
MAX_EVENT_BATCHES = 100  # batches of one Ingest (a batch per type and attribute set)
MAX_EVENTS = 5_000  # events of one Ingest, over all its batches


def check(count: int, limit: int, what: str) -> None:
    """RESOURCE_EXHAUSTED when `count` of `what` exceeds `limit`."""
    if count > limit:
        raise ResourceExhaustedError(
            f"{count} {what} in one request; the most one request may carry is {limit}"
        )
