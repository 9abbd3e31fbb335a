"""The gateway's exception tree and the one error envelope clients see.

Every failure a client can observe is a ``GatewayError`` subclass carrying its HTTP status,
OpenAI error ``type`` and ``code``, optional ``param`` and extra headers. Code anywhere raises
them; one function renders them (``middlewares.render_error``), for the middleware and for
requests refused before it (``malformed``).

    GatewayError
    ├── InvalidRequest        400 invalid_request_error
    │   ├── UnsupportedInput  400 (token ids to a model set to refuse them, …)
    │   └── TaskMismatch      400 (a reranker asked to embed, an embedding model to rerank)
    ├── AuthenticationFailed  401 authentication_error
    ├── CrossOriginRefused    403 (a browser request from another site's page)
    ├── ModelNotFound         404 model_not_found
    ├── RequestTimeout        408 (a body that did not arrive in time)
    ├── PayloadTooLarge       413
    ├── UnsupportedMediaType  415 (a browser's form or text body, a Content-Encoding not read)
    ├── ExpectationFailed     417 (an Expect header other than 100-continue)
    ├── QueueFull             429 + Retry-After
    ├── HeadersTooLarge       431 (a request line or header over the parser's limits)
    ├── UpstreamRejected      upstream's 4xx, its message kept
    ├── UpstreamFailed        502 (refused, reset, 5xx, garbled body)
    ├── UpstreamTimeout       504
    ├── Unavailable           503 + Retry-After (no healthy instance, draining, queue timeout)
    └── InternalError         500 (a bug; message generic)
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        upstream_kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.upstream_kind = upstream_kind  # set when an upstream caused it (for metrics)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class UnsupportedInput(InvalidRequest):
    code = "unsupported_input"


class TaskMismatch(InvalidRequest):
    code = "model_task_mismatch"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class CrossOriginRefused(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "cross_origin_refused"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class ExpectationFailed(GatewayError):
    status = 417
    type = "invalid_request_error"
    code = "expectation_failed"


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class QueueFull(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class UpstreamRejected(GatewayError):
    """The upstream refused the request as invalid (its 4xx); the status class is kept."""

    type = "invalid_request_error"
    code = "upstream_rejected"


class UpstreamFailed(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_failed"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class Unavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: float = 5, **kwargs: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)


class InternalError(GatewayError):
    status = 500
    type = "server_error"
    code = "internal_error"


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` lists every error with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class RuntimeStartError(Exception):
    """A managed instance could not be started; the message names the cause and last log lines."""
