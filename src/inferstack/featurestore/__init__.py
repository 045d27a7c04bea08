"""The online feature store: typed features of entities, written in bulk, read in batches."""
