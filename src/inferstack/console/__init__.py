"""The console: a read-only web UI for the catalog, look-ups, model graphs, ranking requests
and health, served under /ui by `inferstack serve` (and by `inferstack ui` on its own)."""

from inferstack.console.app import add_console

__all__ = ["add_console"]
