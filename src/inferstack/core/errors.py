"""Errors that carry where the bad thing is, so every surface can name it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class InferstackError(Exception):
    """Base class of errors a user can act on; the message names the bad thing.

    `status` is the gRPC status code name every transport reports it as (HTTP maps it).
    """

    status = "FAILED_PRECONDITION"


class NotFoundError(InferstackError):
    """An entity, feature group or feature that is not defined."""

    status = "NOT_FOUND"


class InvalidArgumentError(InferstackError):
    """A request or file with a value of the wrong shape or type."""

    status = "INVALID_ARGUMENT"


class ResourceExhaustedError(InferstackError):
    """A request larger than the configured limits."""

    status = "RESOURCE_EXHAUSTED"


class UnavailableError(InferstackError):
    """A backing system that does not answer in time."""

    status = "UNAVAILABLE"


class DefinitionError(InferstackError):
    """Invalid definitions: each problem names the file, the line and what is wrong."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def located(path: Path | str | None, line: int | None, message: str) -> str:
    """Format one problem as `file:line: message` (parts left out when unknown)."""
    where = str(path) if path is not None else "<definitions>"
    if line is not None:
        where = f"{where}:{line}"
    return f"{where}: {message}"


class DeadlineExceededError(InferstackError):
    """The caller's deadline passed before the work could finish."""

    status = "DEADLINE_EXCEEDED"


class UnauthenticatedError(InferstackError):
    """No token, or one that no caller holds (unknown or revoked). Never quotes the token."""

    status = "UNAUTHENTICATED"


class PermissionDeniedError(InferstackError):
    """A known caller asking for something outside its grants; names what was denied."""

    status = "PERMISSION_DENIED"
