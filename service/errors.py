"""Domain errors, raised by every layer; api/errors.py maps each to an HTTP status and body."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error a client can be told about."""

    def __init__(self, message: str, *, field: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after


class InvalidJSON(ServiceError):
    """The body is not valid JSON."""


class InvalidRequest(ServiceError):
    """A field breaks its limit or an unknown field was sent."""


class ContextOverflow(ServiceError):
    """Prompt tokens + max_new_tokens do not fit the model's context."""


class UnknownToken(ServiceError):
    """A token id outside the vocabulary."""


class UnknownModel(ServiceError):
    """A request named a model that is not served."""


class QueueFull(ServiceError):
    """Every worker is busy and the wait queue is full."""


class NotReady(ServiceError):
    """The model is not loaded (yet), or failed to load."""


class ModelCapacity(ServiceError):
    """A model cannot be loaded now: the loaded models in use fill the count or memory budget."""


class ShuttingDown(ServiceError):
    """The server is draining and takes no new requests."""


class GenerationFailed(ServiceError):
    """The model failed while generating."""


class Unauthorized(ServiceError):
    """A missing or wrong API key (the message never contains the key)."""


class InvalidHost(ServiceError):
    """The Host header names a host this server does not answer to (e.g. a DNS-rebinding page)."""


class UnsupportedMediaType(ServiceError):
    """A request body that is not declared as application/json."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none), for a user."""
    return " ".join(str(exc).split()) or type(exc).__name__

