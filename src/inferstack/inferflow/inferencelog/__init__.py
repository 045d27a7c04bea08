"""Inference logging: a sampled record per request, to Parquet files or a Kafka topic."""
