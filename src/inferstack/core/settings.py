"""Where the embedded deployment keeps its files."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "INFERSTACK_DATA_DIR"
DEFAULT_DATA_DIR = Path(".inferstack")


def resolve_data_dir(explicit: Path | None = None) -> Path:
    """--data-dir wins, then INFERSTACK_DATA_DIR, then ./.inferstack."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(DATA_DIR_ENV)
    return Path(from_env) if from_env else DEFAULT_DATA_DIR
