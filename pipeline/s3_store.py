"""S3 through s3fs with one retry policy of our own, and give-ups that say what happened.

Why not the defaults. botocore retries in "legacy" mode (exponential backoff without a cap) or
"standard" mode, whose retry quota (a token bucket per client: 5-14 tokens per retry, 1 back per
success) runs dry under sustained faults and then stops retrying at all: with half the requests
answered 503, runs failed at random. s3fs retries only errors whose text says "SlowDown", so a
503 to a HEAD (no body, no code) was not retried and surfaced as "OSError: [Errno 16] Service
Unavailable", naming neither the store nor the operation.

So botocore's own retries are off (`total_max_attempts: 1`) and every request of every client
this filesystem creates goes through `RetryHandler` (botocore's `needs-retry` event):
  - transient: 500/502/503/504, 429, throttling codes (SlowDown, ...), RequestTimeout, and
    connection errors (refused, reset, closed before the response, timeouts);
  - up to `RetryPolicy.attempts` attempts with full-jitter exponential backoff: attempt n waits
    uniform(0, min(cap, base * 2**(n-1))). With the defaults (12 attempts, 0.1 s doubling to a
    5 s cap) one request waits at most 31.3 s in all;
  - a response body cut mid-download is outside botocore's loop: s3fs re-requests it, up to
    `S3_BODY_RETRIES` times with its own short waits (0.1 s growing 1.7x: 3.3 s in all);
  - a give-up raises `StoreGaveUp` (an OSError, which s3fs does not run again) whose message is
    one line (`give_up_line`): the store, the operation and its object, how many
    attempts over how long, the last failure, and the share of this store's recent requests that
    failed transiently (the rate seen), e.g.
    `S3 store http://127.0.0.1:9000: PutObject bkt/out/_manifest/x.json gave up after 10 attempts in 19.8 s
    (503 SlowDown); 52 % of the last 400 requests to this store failed transiently`.

A retried request whose first try was applied by the store (a cut response) is the commit
protocol's concern: sinks/writer.py settles every such outcome by reading.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import s3fs
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError

from pipeline.errors import GIVE_UP_KEY

TRANSIENT_STATUS = {429, 500, 502, 503, 504}
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                   "RequestThrottled", "ServiceUnavailable", "InternalError", "RequestTimeout",
                   "RequestTimeoutException", "PriorRequestNotComplete", "BandwidthLimitExceeded"}
S3_BODY_RETRIES = 6              # s3fs's tries of a request whose response body was cut (its loop)
RATE_WINDOW = 400                # the recent requests the rate seen is computed over


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 12
    base_s: float = 0.1
    cap_s: float = 5.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform over [0, the capped exponential] (the AWS architecture blog's
        recommendation: retries of many clients spread out instead of arriving together)."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))

    def bound_s(self) -> float:
        """The most one request can wait before it gives up."""
        return sum(min(self.cap_s, self.base_s * 2 ** i) for i in range(self.attempts - 1))


POLICY = RetryPolicy()


class StoreHealth:
    """The outcome of this process's recent requests to one store (the "rate seen")."""

    def __init__(self, window: int = RATE_WINDOW) -> None:
        self.outcomes: collections.deque[bool] = collections.deque(maxlen=window)
        self.lock = threading.Lock()

    def record(self, failed: bool) -> None:
        with self.lock:
            self.outcomes.append(failed)

    def rate(self) -> tuple[int, int]:
        with self.lock:
            return sum(self.outcomes), len(self.outcomes)


_HEALTH: dict[str, StoreHealth] = {}
_HEALTH_LOCK = threading.Lock()


def health_of(store: str) -> StoreHealth:
    with _HEALTH_LOCK:
        return _HEALTH.setdefault(store, StoreHealth())


def transient_failure(response: Any, caught_exception: BaseException | None) -> str | None:
    """What went wrong, when it is worth another try; None for success or a permanent error."""
    if caught_exception is not None:
        if isinstance(caught_exception, (HTTPClientError, BotoConnectionError)):
            return type(caught_exception).__name__
        return None
    if not response:
        return None
    http_response, parsed = response
    status = getattr(http_response, "status_code", 200)
    code = (parsed.get("Error") or {}).get("Code") if isinstance(parsed, dict) else None
    if status in TRANSIENT_STATUS or code in TRANSIENT_CODES:
        return f"{status} {code}" if code and code != str(status) else f"{status}"
    return None


class RetryHandler:
    """botocore `needs-retry` handler: the delay before the next attempt, or None to stop."""

    def __init__(self, store: str, policy: RetryPolicy = POLICY) -> None:
        self.store, self.policy = store, policy
        self.health = health_of(store)
        self.rng = random.Random()

    def __call__(self, response=None, attempts: int = 1, caught_exception=None, request_dict=None,
                 operation=None, **kwargs) -> float | None:
        context = (request_dict or {}).setdefault("context", {})
        started = context.setdefault("scaletok_started", time.monotonic())
        failure = transient_failure(response, caught_exception)
        self.health.record(failure is not None)
        if failure is None:
            return None
        if attempts < self.policy.attempts:
            return self.policy.delay(attempts, self.rng)
        line = give_up_line(self.store, getattr(operation, "name", "request"), (request_dict or {}).get("url", ""),
                            attempts, time.monotonic() - started, failure, *self.health.rate())
        # Raised here, not returned as the last error: s3fs would run the whole loop again for an
        # error that says "SlowDown" or a connection error, multiplying the bound.
        raise StoreGaveUp(line) from caught_exception


def give_up_line(store: str, operation: str, url: str, attempts: int, elapsed_s: float, failure: str,
                 failed: int, seen: int) -> str:
    target = _object_of(url)
    rate = f"; {100 * failed / seen:.0f} % of the last {seen} requests to this store failed transiently" if seen else ""
    return (f"S3 store {store}: {operation}{' ' + target if target else ''} gave up after {attempts} attempts in "
            f"{elapsed_s:.1f} s ({failure}){rate}")


def _object_of(url: str) -> str:
    """`http://host:port/bucket/key?query` -> `bucket/key` (no query: it may hold upload ids or signatures)."""
    path = unquote(url.split("?", 1)[0].split("://", 1)[-1])
    return path.split("/", 1)[1] if "/" in path else ""


class StoreGaveUp(OSError):
    """A request to the store failed transiently on every attempt; the message is the give-up line."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        setattr(self, GIVE_UP_KEY, line)


class RetryingS3FileSystem(s3fs.S3FileSystem):
    """s3fs whose clients retry by `RetryHandler` only (the module docstring says why).
    `retry_attempts` (a storage option, e.g. `--storage-option retry_attempts=20` for a store known
    to be flaky): attempts per request instead of the policy's default."""

    def __init__(self, *args: Any, retry_attempts: int | str | None = None, **kwargs: Any) -> None:
        attempts = int(retry_attempts) if retry_attempts not in (None, "") else POLICY.attempts
        if attempts < 1:
            raise ValueError(f"storage option retry_attempts must be >= 1, got {retry_attempts}")
        self.policy = RetryPolicy(attempts=attempts, base_s=POLICY.base_s, cap_s=POLICY.cap_s)
        config = dict(kwargs.pop("config_kwargs", None) or {})
        config.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
        super().__init__(*args, config_kwargs=config, **kwargs)
        self.retries = S3_BODY_RETRIES

    async def set_session(self, refresh: bool = False, kwargs: dict | None = None):
        client = await super().set_session(refresh=refresh, kwargs=kwargs or {})
        if not getattr(client, "_scaletok_retries", False):
            store = self.endpoint_url or (self.client_kwargs or {}).get("endpoint_url") or "s3 (AWS)"
            client.meta.events.register("needs-retry.s3", RetryHandler(store, self.policy),
                                        unique_id="scaletok-retry")
            client._scaletok_retries = True
        return client
