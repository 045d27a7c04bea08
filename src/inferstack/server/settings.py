"""Deployment settings: where to listen and which adapters to use."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_GRPC_PORT = 6566
DEFAULT_HTTP_PORT = 6567


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Path(".inferstack")
    host: str = "127.0.0.1"
    grpc_port: int = Field(DEFAULT_GRPC_PORT, ge=0, le=65535)
    http_port: int = Field(DEFAULT_HTTP_PORT, ge=-1, le=65535)  # -1 turns HTTP off
    workers: int = Field(1, ge=1, le=64)
    cache_bytes: int = Field(256 << 20, ge=0)  # in-process row cache budget per worker
    max_keys: int = Field(10_000, ge=1)
    max_message_bytes: int = Field(64 << 20, ge=1 << 20)
    shutdown_grace: float = Field(5.0, ge=0)
