"""The shared key-value layer: an LMDB environment and a Cassandra session, each storing
rows (bytes) under keys (bytes) in one table per name, with its settings; and connections to
a Redis-protocol server (redis.py).

The feature store's storage (featurestore/storage/) and the interaction store's tiers
(interactions/hot, interactions/cold) are built on it; neither owns it.
"""
