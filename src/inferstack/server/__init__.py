"""Running inferstack: deployment settings, wiring of adapters, worker processes."""
