"""Inferflow: model id + context ids in, scores out; the feature graph is config."""
