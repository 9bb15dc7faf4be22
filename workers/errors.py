"""The workers' exceptions: one tree, picklable, so arq can carry a failed task's error.

Every constructor argument is passed to ``super().__init__`` (unpickling calls ``cls(*args)``) and
the message is formatted in ``__str__``. Foreign errors (httpx, provider error bodies) are turned
into these once, in :mod:`workers.http`.

::

    WorkerError
    ├── ProviderError                  a provider call did not give the answer we wanted
    │   ├── ProviderHTTPError          the provider answered with an error status
    │   │   ├── RateLimited            429
    │   │   ├── Overloaded             529 (Anthropic), 503 "overloaded"
    │   │   ├── ServerError            other 5xx
    │   │   ├── AuthenticationError    401, 403
    │   │   ├── ProviderNotFound       404
    │   │   └── ProviderInvalidRequest 400, 413, 422 and every other 4xx
    │   ├── TransportError             no HTTP answer at all
    │   │   ├── ConnectionFailed       the request never reached the provider
    │   │   └── ResponseTimeout        sent, but no (complete) answer came back
    │   ├── BatchCreateUnknown         a batch create may or may not have happened
    │   ├── BatchNotEnded              results asked for before the batch ended
    │   └── MalformedResponse          an answer we cannot read
    ├── BatchInputError                a batch input we refuse to send
    │   ├── BatchTooLarge              over the provider's request or byte limit
    │   └── InvalidBatchInput          a malformed or repeated custom_id, or a body that is not JSON
    ├── LeaseLost                      a submission no longer holds its batch's lease: do not create
    ├── UnsafeDestination              a webhook URL the SSRF guard refuses
    └── ChannelNotConfigured           an alert for a channel the settings no longer configure
"""

from __future__ import annotations


class WorkerError(Exception):
    """Root of every error raised by ``workers``."""


class ProviderError(WorkerError):
    """Raised when a provider call fails; ``retriable`` says whether trying again later may help."""

    retriable: bool = False


class ProviderHTTPError(ProviderError):
    """Raised when a provider answers with an error status; ``type`` is the provider's error type."""

    def __init__(
        self,
        status: int,
        type: str,  # the providers' own field name
        message: str,
        retriable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, type, message, retriable, retry_after)
        self.status = status
        self.type = type
        self.message = message
        self.retriable = retriable
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}"


class RateLimited(ProviderHTTPError):
    """Raised when the provider answers 429: a rate or capacity limit (``retry_after`` when it said)."""


class Overloaded(ProviderHTTPError):
    """Raised when the provider as a whole is overloaded (Anthropic's 529)."""


class ServerError(ProviderHTTPError):
    """Raised when the provider answers a 5xx other than overload."""


class AuthenticationError(ProviderHTTPError):
    """Raised when the provider answers 401 or 403: the key is missing, wrong or not allowed."""


class ProviderNotFound(ProviderHTTPError):
    """Raised when the provider answers 404: no such batch or file (Anthropic 404s a fresh batch briefly)."""


class ProviderInvalidRequest(ProviderHTTPError):
    """Raised when the provider answers another 4xx: the request is wrong; resent unchanged it fails again."""


class TransportError(ProviderError):
    """Raised when no HTTP answer came back; ``detail`` is the transport's explanation."""

    def __init__(self, method: str, url: str, detail: str) -> None:
        super().__init__(method, url, detail)
        self.method = method
        self.url = url
        self.detail = detail

    def __str__(self) -> str:
        return f"{type(self).__name__} on {self.method} {self.url}: {self.detail}"


class ConnectionFailed(TransportError):
    """Raised when the request never reached the provider (connect error or timeout, pool timeout)."""

    retriable = True


class ResponseTimeout(TransportError):
    """Raised when the request was sent but no complete answer came back; it may have taken effect."""

    retriable = True


class BatchCreateUnknown(ProviderError):
    """Raised when a batch create's outcome is unknown: reconcile by listing batches, do not resend."""

    retriable = True

    def __init__(self, batch_id: str, reason: str) -> None:
        super().__init__(batch_id, reason)
        self.batch_id = batch_id
        self.reason = reason

    def __str__(self) -> str:
        return f"outcome of creating batch {self.batch_id} unknown: {self.reason}"


class BatchNotEnded(ProviderError):
    """Raised when a batch's results are read before it has ended; poll again later."""

    retriable = True

    def __init__(self, provider_batch_id: str, status: str) -> None:
        super().__init__(provider_batch_id, status)
        self.provider_batch_id = provider_batch_id
        self.status = status

    def __str__(self) -> str:
        return f"batch {self.provider_batch_id} has not ended (status {self.status})"


class MalformedResponse(ProviderError):
    """Raised when a provider's answer cannot be parsed as the documented shape."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BatchInputError(WorkerError):
    """Raised when a batch input is refused before anything is sent."""


class BatchTooLarge(BatchInputError):
    """Raised when a batch input exceeds the provider's request or byte limit; split it first."""

    def __init__(self, requests: int, nbytes: int, request_limit: int, byte_limit: int) -> None:
        super().__init__(requests, nbytes, request_limit, byte_limit)
        self.requests = requests
        self.nbytes = nbytes
        self.request_limit = request_limit
        self.byte_limit = byte_limit

    def __str__(self) -> str:
        return (
            f"batch of {self.requests} requests / {self.nbytes} bytes exceeds the limit of "
            f"{self.request_limit} requests / {self.byte_limit} bytes"
        )


class InvalidBatchInput(BatchInputError):
    """Raised when a line cannot go into a batch: a bad or repeated custom_id, a body that is not JSON."""

    def __init__(self, custom_id: str, reason: str) -> None:
        super().__init__(custom_id, reason)
        self.custom_id = custom_id
        self.reason = reason

    def __str__(self) -> str:
        return f"line {self.custom_id!r}: {self.reason}"


class LeaseLost(WorkerError):
    """Raised when a submission no longer holds its batch's lease, before it would create."""

    def __init__(self, batch_id: str, outcome: str) -> None:
        super().__init__(batch_id, outcome)
        self.batch_id = batch_id
        self.outcome = outcome

    def __str__(self) -> str:
        return f"batch {self.batch_id}: submission lease lost ({self.outcome})"


class UnsafeDestination(WorkerError):
    """Raised when a webhook URL resolves to an address the SSRF guard refuses (or to nothing)."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(host, address, reason)
        self.host = host
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        where = f" ({self.address})" if self.address else ""
        return f"refused to call {self.host}{where}: {self.reason}"


class ChannelNotConfigured(WorkerError):
    """Raised when a notification names a channel the settings no longer configure."""

    def __init__(self, channel: str) -> None:
        super().__init__(channel)
        self.channel = channel

    def __str__(self) -> str:
        return f"alert channel {self.channel!r} is not configured"
