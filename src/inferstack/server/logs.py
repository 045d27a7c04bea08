"""Log lines of `inferstack serve`: text or JSON (one object per line), and request lines.

`configure` sets up the process's root logger in the chosen format. JSON lines carry time,
level, worker (the process id), logger and message, and request lines add method, status,
duration_ms, request_id and caller.

Request lines (`RequestLog.request_done`, called once per gRPC call and HTTP request by
the transports; each worker has one `RequestLog`, held by its call pipeline): with the access
log on, every request gets one; with it off (the default), only requests that failed do, at
most `ERROR_LINES_PER_WINDOW` per `WINDOW` seconds per worker. The next line after a
suppressed burst says how many were left out, so a flood of bad requests cannot fill a disk.
Request lines never carry metadata or headers, so no token reaches a log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from inferstack.core.ratelimit import RateLimiter
from inferstack.core.text import one_line
from inferstack.server.requestcontext import get_caller, get_request_id

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
ERROR_LINES_PER_WINDOW = 20
WINDOW = 10.0  # seconds
REQUEST_FIELDS = ("caller", "method", "status", "duration_ms", "request_id")
# Statuses that point at the server or a system behind it rather than at the caller.
SERVER_SIDE = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS", "UNIMPLEMENTED"})

requests_log = logging.getLogger("inferstack.requests")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; an exception goes into "exception" as one escaped string."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "worker": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in REQUEST_FIELDS:
            if field in record.__dict__:
                entry[field] = record.__dict__[field]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic line; request lines end with their duration, request id and caller."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = record.__dict__
        if "request_id" in fields:
            line += (
                f" [{fields['duration_ms']:.1f} ms, request {fields['request_id']},"
                f" caller {fields['caller'] or '-'}]"
            )
        return line


def configure(log_format: LogFormat, level: int | str, worker: bool = False) -> None:
    """Replace the root logger's handlers with one writing `log_format` to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        who = "worker-%(process)d " if worker else ""
        handler.setFormatter(TextFormatter(f"%(asctime)s {who}%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class RequestLog:
    """Decides which requests get a line and writes it (see the module docstring)."""

    def __init__(
        self,
        access_log: bool = False,
        limiter: RateLimiter | None = None,
        logger: logging.Logger = requests_log,
    ) -> None:
        self.access_log = access_log
        self.limiter = limiter or RateLimiter(ERROR_LINES_PER_WINDOW, WINDOW)
        self.logger = logger

    def request_done(
        self, method: str, status: str, seconds: float, detail: str = "", failed: bool | None = None
    ) -> None:
        """One call finished with `status` (a gRPC code name, or an HTTP status as digits):
        log it if wanted. Failed: any gRPC status but OK, HTTP >= 400."""
        if failed is None:
            failed = status != "OK" and not (status.isdigit() and int(status) < 400)
        self.done(method, status, seconds, detail, failed)

    def exception(self, logger: logging.Logger, message: str) -> None:
        """Log the exception being handled with its traceback, unless this worker has already
        written `ERROR_LINES_PER_WINDOW` lines in this window: a bug that a caller can
        trigger at will must not be able to fill the disk with tracebacks."""
        allowed, suppressed = self.limiter.allow()
        if allowed:
            suffix = (
                f" ({suppressed} request log lines suppressed before this one)"
                if suppressed
                else ""
            )
            logger.exception("%s%s", message, suffix)

    def done(self, method: str, status: str, seconds: float, detail: str, failed: bool) -> None:
        if not self.access_log:
            if not failed:
                return
            allowed, suppressed = self.limiter.allow()
            if not allowed:
                return
            if suppressed:
                self.logger.warning(
                    "%d request log lines suppressed (at most %d per %g s)",
                    suppressed,
                    self.limiter.limit,
                    self.limiter.window,
                )
        server_side = status in SERVER_SIDE or status.startswith("5")
        level = logging.WARNING if failed and server_side else logging.INFO
        message = f"{method} {status}"
        if detail:
            message += f": {one_line(detail)}"
        self.logger.log(
            level,
            "%s",
            message,
            extra={
                "method": method,
                "status": status,
                "duration_ms": round(seconds * 1e3, 3),
                "request_id": get_request_id(),
                "caller": get_caller(),
            },
        )


def _without_request_bytes(message: str) -> str:
    """aiohttp's first line of what is wrong, without the bytes of the request it quotes
    after it (they could be an Authorization header)."""
    first = message.strip().splitlines()[0] if message.strip() else "unparseable request"
    return one_line(re.split(r"""\bb['"]""", first, maxsplit=1)[0].rstrip(" :"))


class BadHttpFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (bad request line, header, length) with a
    traceback, though it answers 400, and so it does for the rest of a body it drains after
    our answer when that body is not in its Content-Encoding: make each one line without a
    traceback, counted against the worker's limit on failure lines. Its other errors keep
    their traceback, under the same limit."""

    def __init__(self, limiter: RateLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None:
            return True
        allowed, suppressed = self.limiter.allow()
        if not allowed:
            return False
        error = record.exc_info[1]
        if isinstance(error, HttpProcessingError):
            record.msg = "bad HTTP request (answered %d): %s"
            record.args = (error.code, _without_request_bytes(str(error.message)))
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        elif isinstance(error, RequestPayloadError):  # the body, already answered 400
            record.msg = "bad HTTP request body (answered): %s"
            record.args = (one_line(str(error)),)  # the decoder's words, no request bytes
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} request log lines suppressed before it)"
        return True


def filter_bad_http(request_log: RequestLog) -> None:
    """aiohttp's reports of requests that are not HTTP, as rate-limited single lines
    (one filter per process: the last worker set-up's limiter wins)."""
    aiohttp_log = logging.getLogger("aiohttp.server")
    for old in [f for f in aiohttp_log.filters if isinstance(f, BadHttpFilter)]:
        aiohttp_log.removeFilter(old)
    aiohttp_log.addFilter(BadHttpFilter(request_log.limiter))
