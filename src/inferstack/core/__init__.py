"""Shared core: definitions, feature types, the row format and YAML loading."""
