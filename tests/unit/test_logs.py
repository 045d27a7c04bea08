"""Log lines and request context: JSON and text formats, which requests get a line, the rate
limit on failure lines, request ids from callers, and parsing that never raises."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from inferstack.core.ratelimit import RateLimiter
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.server.grpc.registration import MalformedRequest, tolerant_deserializer
from inferstack.server.logs import (
    JsonFormatter,
    RequestLog,
    TextFormatter,
    one_line,
)
from inferstack.server.requestcontext import (
    accept_request_id,
    current_caller,
    current_request_id,
    get_caller,
    get_request_id,
    set_caller,
    set_request_id,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def request_log(access_log: bool, limit: int = 3) -> tuple[RequestLog, Lines, Clock]:
    clock = Clock()
    logger = logging.getLogger(f"test.requests.{access_log}.{limit}")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    lines = Lines()
    logger.addHandler(lines)
    return RequestLog(access_log, RateLimiter(limit, 10.0, clock), logger), lines, clock


def test_rate_limiter_allows_a_burst_then_counts_what_it_suppressed() -> None:
    clock = Clock()
    limiter = RateLimiter(2, 10.0, clock)
    assert [limiter.allow() for _ in range(5)] == [
        (True, 0),
        (True, 0),
        (False, 0),
        (False, 0),
        (False, 0),
    ]
    clock.now += 10.0
    assert limiter.allow() == (True, 3)  # the next window starts by reporting them
    assert limiter.allow() == (True, 0)


def test_without_access_log_only_failures_get_lines_and_they_are_limited() -> None:
    log, lines, clock = request_log(access_log=False, limit=3)
    log.done("FeatureStore/Retrieve", "OK", 0.001, "", failed=False)
    assert lines.records == []
    for _ in range(10):
        log.done("FeatureStore/Retrieve", "INVALID_ARGUMENT", 0.001, "bad", failed=True)
    assert len(lines.records) == 3
    clock.now += 10.0
    log.done("Inferflow/Infer", "INTERNAL", 0.002, "boom", failed=True)
    summary, line = lines.records[3:]
    assert summary.getMessage() == "7 request log lines suppressed (at most 3 per 10 s)"
    assert line.levelno == logging.WARNING  # server-side failures are warnings
    assert lines.records[0].levelno == logging.INFO  # the caller's mistakes are not


def test_access_log_writes_every_request_unlimited() -> None:
    log, lines, _ = request_log(access_log=True, limit=1)
    for _ in range(5):
        log.done("POST /v1/retrieve", "200", 0.001, "", failed=False)
    log.done("POST /v1/retrieve", "400", 0.001, "not JSON", failed=True)
    assert len(lines.records) == 6
    assert lines.records[-1].getMessage() == "POST /v1/retrieve 400: not JSON"


def test_request_lines_carry_the_request_context_as_json_fields() -> None:
    log, lines, _ = request_log(access_log=True)
    id_token, caller_token = set_request_id("req-7"), set_caller("ranker-service")
    try:
        log.done("FeatureStore/Persist", "PERMISSION_DENIED", 0.0042, "denied", failed=True)
    finally:
        current_request_id.reset(id_token)
        current_caller.reset(caller_token)
    entry = json.loads(JsonFormatter().format(lines.records[0]))
    assert entry["request_id"] == "req-7" and entry["caller"] == "ranker-service"
    assert entry["method"] == "FeatureStore/Persist" and entry["status"] == "PERMISSION_DENIED"
    assert entry["duration_ms"] == 4.2
    assert entry["level"] == "INFO" and entry["time"].endswith("Z")
    assert entry["message"] == "FeatureStore/Persist PERMISSION_DENIED: denied"
    text = TextFormatter("%(message)s").format(lines.records[0])
    assert text.endswith("[4.2 ms, request req-7, caller ranker-service]")
    assert get_request_id() == "" and get_caller() is None  # reset after the call


def test_json_lines_hold_an_exception_on_one_line() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: broken" in json.loads(line)["exception"]
    assert "request_id" not in json.loads(line)  # only request lines carry request fields


def test_one_line_joins_lines_and_bounds_the_length() -> None:
    assert one_line("a\nb\r\nc") == "a | b | c"
    assert one_line("bell\x07") == "bell?"
    assert len(one_line("x" * 1000)) == 300


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("4bf92f3577b34da6", True),
        ("req.1:a/b+c=d@e-f_g", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("two words", False),
        ("line\nbreak", False),
        ('quote"', False),
        ("", False),
        (None, False),
    ],
)
def test_a_callers_request_id_is_kept_only_when_well_formed(given: str | None, kept: bool) -> None:
    accepted = accept_request_id(given)
    assert (accepted == given) is kept
    if not kept:
        assert len(accepted) == 16 and int(accepted, 16) >= 0


def test_tolerant_deserializer_names_the_message_instead_of_raising() -> None:
    deserialize = tolerant_deserializer(pb.RetrieveRequest)
    valid = pb.RetrieveRequest(entity="user").SerializeToString()
    assert deserialize(valid) == pb.RetrieveRequest(entity="user")
    refused = deserialize(b"\xff\xff\xff")
    assert isinstance(refused, MalformedRequest)
    assert refused.reason == (
        "malformed request: 3 bytes that are not a valid "
        "inferstack.featurestore.v1.RetrieveRequest message"
    )


def test_a_body_aiohttp_drains_after_our_400_is_one_line_without_a_traceback() -> None:
    # After the route answered 400 (a body not in its Content-Encoding), aiohttp drains the
    # rest of the body, meets the same error and logged it as "Unhandled exception" with
    # three chained tracebacks.
    from aiohttp.web_protocol import RequestPayloadError

    from inferstack.core.ratelimit import RateLimiter as Limiter
    from inferstack.server.logs import BadHttpFilter

    try:
        raise RequestPayloadError("400, message:\n  Can not decode content-encoding: gzip")
    except RequestPayloadError:
        record = logging.getLogger("aiohttp.server").makeRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Unhandled exception", (),
            sys.exc_info(),
        )  # fmt: skip
    assert BadHttpFilter(Limiter(10, 10.0)).filter(record)
    assert record.exc_info is None and record.levelno == logging.INFO
    assert "Can not decode content-encoding: gzip" in record.getMessage()
    assert "\n" not in record.getMessage()
