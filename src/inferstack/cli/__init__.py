"""The `inferstack` command line."""
