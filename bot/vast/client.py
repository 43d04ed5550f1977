"""Async Vast.ai REST client: one httpx client, bearer auth, bounded retries, per-endpoint spacing.

Calls to one endpoint take turns ``min_spacing`` seconds apart (Vast limits each endpoint per key).
The turn goes to the most urgent caller first: the watch loop (``Priority.WATCH``, the default)
before slash commands and buttons, which use ``with_priority(Priority.COMMAND)``; a destroy is
always urgent. So a burst of commands queues behind the watcher's poll instead of in front of it.

Every wait (retry backoff, endpoint spacing, log and destroy polling) goes through the injected
``Clock`` so tests and the demo run in simulated time. The API key only ever travels in the
``Authorization`` header of requests to ``base_url``; it is never put in a URL, a log line or an
error message.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import IntEnum
from typing import Any, Literal, TypeVar

import httpx
from pydantic import SecretStr, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_random_exponential

from bot.clock import Clock, SystemClock
from bot.vast.errors import (
    VastAuthError,
    VastDestroyUnconfirmed,
    VastError,
    VastLogsNotReady,
    VastNotFound,
    VastRateLimited,
    VastResponseError,
    VastServerError,
    VastTransportError,
    error_from_response,
)
from bot.vast.models import Instance, Offer, OfferQuery, User

log = logging.getLogger(__name__)

# Endpoint templates: the unit of rate limiting, spacing and ``VastClient.stats``.
BUNDLES = "POST /api/v0/bundles/"
CREATE = "PUT /api/v0/asks/{id}/"
LIST = "GET /api/v1/instances/"
GET_ONE = "GET /api/v0/instances/{id}/"
DESTROY = "DELETE /api/v0/instances/{id}/"
REQUEST_LOGS = "PUT /api/v0/instances/request_logs/{id}/"
CURRENT_USER = "GET /api/v0/users/current/"
LOG_RESULT = "GET result_url"  # the uploaded log (S3 in production): not Vast's API, no key sent

# Minimum seconds between two calls to the same endpoint, a little above Vast's published
# thresholds (list 1.0, show 2.0, destroy 3.0, create 4.5, bundles 10/minute).
DEFAULT_MIN_SPACING: dict[str, float] = {
    BUNDLES: 6.0,
    CREATE: 5.0,
    LIST: 1.0,
    GET_ONE: 2.0,
    DESTROY: 3.0,
    REQUEST_LOGS: 1.0,
    CURRENT_USER: 1.0,
    LOG_RESULT: 0.0,
}
NO_SPACING: dict[str, float] = {"*": 0.0}

PAGE_SIZE = 25  # v1 list maximum
MAX_PAGES = 400
DEFAULT_RUNTYPE = "ssh_direc ssh_proxy"  # Vast's CLI spelling ("direc"), see vast-api.md §3
RETRYABLE_STATUS = frozenset({502, 503, 504})
MAX_LABEL = 256

Policy = Literal["idempotent", "create"]


class Priority(IntEnum):
    """Who goes first when several calls wait for the same endpoint (lower goes first)."""

    WATCH = 0  # the watch loop: polls, label look-ups, log fallbacks, destroys
    COMMAND = 1  # slash commands and buttons: a person waits, but no safeguard does


class _Turns:
    """One endpoint's turns: one call at a time, the most urgent waiter first, then first come."""

    def __init__(self) -> None:
        self.busy = False
        self.last_done: float | None = None
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def ticket(self) -> int:
        return next(self._order)

    async def take(self, priority: int, ticket: int) -> None:
        """Wait for the turn (at once if nobody has it)."""
        if not self.busy and not self._waiting:
            self.busy = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (priority, ticket, fut)
        heapq.heappush(self._waiting, entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give()  # handed the turn just as it was cancelled: pass it on
            elif entry in self._waiting:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise

    def give(self) -> None:
        """Hand the turn to the most urgent waiter, or free it."""
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self.busy = False

    def more_urgent_than(self, priority: int) -> bool:
        return any(p < priority and not fut.done() for p, _, fut in self._waiting)


class VastCreateOutcomeUnknown(VastTransportError):
    """A create reached Vast, its answer was lost and the label could not be looked up either:
    an instance may exist and bill. Whoever rented must keep looking for the label."""


class _StopAfterClock(stop_base):
    """Stop retrying when the next backoff would end past ``budget`` seconds of (injected) clock time."""

    def __init__(self, clock: Clock, start: float, budget: float) -> None:
        self.clock, self.start, self.budget = clock, start, budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock.now() - self.start + retry_state.upcoming_sleep > self.budget


def _retryable(policy: Policy, exc: BaseException) -> bool:
    if isinstance(exc, VastRateLimited):
        return True  # a 429 is refused before anything happens, so even a create may repeat
    if isinstance(exc, VastTransportError):
        # A create may only repeat when the request provably never reached Vast.
        return policy == "idempotent" or not exc.request_sent
    if isinstance(exc, VastServerError):
        return policy == "idempotent" and exc.status in RETRYABLE_STATUS
    return False


class VastClient:
    """The Vast.ai API as typed async operations. Use ``async with VastClient(...) as vast:``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr | None,
        *,
        clock: Clock | None = None,
        timeout: float = 30,
        max_attempts: int = 4,
        max_retry_time: float = 60,
        min_spacing: dict[str, float] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 20.0,
        logs_timeout: float = 60.0,
        logs_poll_interval: float = 2.0,
        destroy_confirm_timeout: float = 120.0,
        destroy_poll_interval: float = 5.0,
        reconcile_checks: int = 3,
        reconcile_interval: float = 5.0,
    ) -> None:
        url = httpx.URL(base_url.rstrip("/"))
        if url.query:
            raise ValueError("VAST_API_URL must not carry a query string (the key goes in a header)")
        if isinstance(api_key, SecretStr):
            api_key = api_key.get_secret_value()
        self._api_key: str | None = api_key.strip() if api_key and api_key.strip() else None
        self.base_url = str(url)
        self._clock: Clock = clock or SystemClock()
        self._timeout = timeout
        self._max_attempts = max(1, max_attempts)
        self._max_retry_time = max_retry_time
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._logs_timeout = logs_timeout
        self._logs_poll_interval = logs_poll_interval
        self._destroy_confirm_timeout = destroy_confirm_timeout
        self._destroy_poll_interval = destroy_poll_interval
        self._reconcile_checks = max(1, reconcile_checks)
        self._reconcile_interval = reconcile_interval
        self.min_spacing = self._merge_spacing(min_spacing)
        self.stats: Counter[str] = Counter()
        self.priority = Priority.WATCH
        self._turns: dict[str, _Turns] = {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": "vastops/0.1", "Accept": "application/json"},
        )

    def __repr__(self) -> str:
        return f"VastClient({self.base_url!r}, api_key={'<set>' if self._api_key else None})"

    async def __aenter__(self) -> VastClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def has_key(self) -> bool:
        return self._api_key is not None

    def with_priority(self, priority: Priority) -> VastClient:
        """This client for callers of another priority: same connection, same endpoint turns and
        spacing, same stats; only who goes first differs. Close the original, not the copy."""
        lane = copy.copy(self)
        lane.priority = Priority(priority)
        return lane

    # ------------------------------------------------------------------ operations

    async def search_offers(self, query: OfferQuery) -> list[Offer]:
        """Offers matching ``query``, cheapest first, after a local re-check of every filter.

        The local check is the trusted one: it drops excluded countries given as codes or full
        names, offers with no recognisable geolocation, and re-applies price, VRAM and machines.
        """
        # Ask for a few more than wanted: some server-side matches fail the local check.
        body = query.to_api_body(limit=min(query.limit + 16, 1000))
        data = await self._call(BUNDLES, json_body=body)
        rows = data.get("offers") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise VastResponseError("offer search answered without an 'offers' list", endpoint=BUNDLES)
        kept: list[Offer] = []
        for row in rows:
            offer = _parse(Offer, row)
            if offer is None:
                continue
            reason = query.rejects(offer)
            if reason is not None:
                log.debug("offer %s dropped: %s", offer.id, reason)
                continue
            kept.append(offer)
        kept.sort(key=lambda o: (o.dph_total if o.dph_total is not None else float("inf"), o.id))
        return kept[: query.limit]

    async def create_instance(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        label: str,
        env: dict[str, str] | None = None,
        onstart: str | None = None,
        runtype: str = DEFAULT_RUNTYPE,
        cancel_unavail: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Rent offer ``offer_id`` and return the new instance id.

        ``label`` must be unique per rental: it is how an unclear outcome is reconciled. If an
        instance with this label already exists its id is returned and nothing new is rented.
        The PUT is never blindly repeated: only a 429 or a connection that never reached Vast is
        retried; after a timeout, dropped connection or 5xx the client looks for the label and
        returns the instance it finds, or raises the original error if none appears, or
        ``VastCreateOutcomeUnknown`` if the label cannot be looked up (an instance may exist).
        """
        label = label.strip()
        if not label or len(label) > MAX_LABEL:
            raise ValueError(f"a create needs a unique label of 1 to {MAX_LABEL} characters")
        existing = await self.find_by_label(label)
        if existing is not None:
            log.warning("instance %s already carries label %r; not renting another", existing.id, label)
            return existing.id
        body: dict[str, Any] = {
            "client_id": "me",
            "image": image,
            "disk": disk_gb,
            "label": label,
            "env": dict(env or {}),
            "onstart": onstart,
            "runtype": runtype,
            "cancel_unavail": cancel_unavail,
            "price": None,  # on-demand; a price would make it an interruptible bid
            **(extra or {}),
        }
        try:
            data = await self._call(CREATE, path_id=offer_id, json_body=body, policy="create")
        except (VastTransportError, VastServerError, VastResponseError) as err:
            if isinstance(err, VastTransportError) and not err.request_sent:
                raise
            return await self._reconcile_create(offer_id, label, err)
        new_id = data.get("new_contract") if isinstance(data, dict) else None
        if isinstance(new_id, int | str) and str(new_id).isdigit():
            log.info("rented offer %s as instance %s (label %r)", offer_id, new_id, label)
            return int(new_id)
        unclear = VastResponseError("create answered without 'new_contract'", endpoint=CREATE)
        return await self._reconcile_create(offer_id, label, unclear)

    async def list_instances(self, *, select_filters: dict[str, Any] | None = None) -> list[Instance]:
        """All of the account's instances (``GET /api/v1/instances/``, 25 a page, following ``next_token``)."""
        params: dict[str, str | int] = {
            "limit": PAGE_SIZE,
            "order_by": json.dumps([{"col": "id", "dir": "asc"}]),
        }
        if select_filters:
            params["select_filters"] = json.dumps(select_filters)
        found: dict[int, Instance] = {}
        seen_tokens: set[str] = set()
        for _ in range(MAX_PAGES):
            data = await self._call(LIST, params=params)
            if not isinstance(data, dict):
                raise VastResponseError("instance list is not a JSON object", endpoint=LIST)
            rows = data.get("instances")
            if not isinstance(rows, list):
                # An account with no instances is [], never null or missing: such an answer says nothing
                # about what exists, and reading it as "none" would make every instance look gone.
                raise VastResponseError("'instances' is not a list", endpoint=LIST)
            for row in rows:
                instance = _parse(Instance, row)
                if instance is not None:
                    found[instance.id] = instance  # an instance may shift pages between calls
            token = data.get("next_token")
            if not token or not rows or not isinstance(token, str) or token in seen_tokens:
                break
            seen_tokens.add(token)
            params["after_token"] = token
        else:
            log.warning("instance list stopped after %d pages", MAX_PAGES)
        return sorted(found.values(), key=lambda i: i.id)

    async def find_by_label(self, label: str) -> Instance | None:
        """The instance carrying exactly ``label`` (one filtered list call), or None."""
        matches = [
            i for i in await self.list_instances(select_filters={"label": {"eq": label}}) if i.label == label
        ]
        if len(matches) > 1:
            log.error("%d instances carry label %r: %s", len(matches), label, [i.id for i in matches])
        return matches[0] if matches else None

    async def get_instance(self, instance_id: int) -> Instance | None:
        """One instance, or None when Vast says it is gone (``{"instances": null}`` or not found)."""
        try:
            data = await self._call(GET_ONE, path_id=instance_id, params={"owner": "me"})
        except VastNotFound:
            return None
        row = data.get("instances") if isinstance(data, dict) else None
        if isinstance(row, list):
            row = row[0] if row else None
        if row is None:
            return None
        try:
            return Instance.model_validate(row)
        except ValidationError:
            raise VastResponseError(f"instance {instance_id} came back malformed", endpoint=GET_ONE) from None

    async def destroy_instance(self, instance_id: int, *, confirm: bool = True) -> bool:
        """Destroy an instance (irreversible) and, with ``confirm``, poll until Vast no longer shows it.

        Returns True once gone (an instance already gone counts). Raises ``VastDestroyUnconfirmed``
        when it is still listed after the confirmation budget, so billing is never silently left on.
        """
        await self._delete(instance_id)
        if not confirm:
            return True
        deadline = self._clock.now() + self._destroy_confirm_timeout
        polls = 0
        while True:
            instance = await self.get_instance(instance_id)
            if instance is None or instance.cur_state == "unloaded":
                log.info("instance %s destroyed and confirmed gone", instance_id)
                return True
            if self._clock.now() >= deadline:
                raise VastDestroyUnconfirmed(
                    f"instance {instance_id} is still listed ({instance.actual_status}) "
                    f"{self._destroy_confirm_timeout:.0f}s after destroy; it may still be billing",
                    endpoint=DESTROY,
                )
            polls += 1
            if polls % 3 == 0:
                await self._delete(instance_id)  # repeat: the CLI's self-test also re-sends destroy
            await self._clock.sleep(self._destroy_poll_interval)

    async def request_logs(self, instance_id: int, tail: int = 1000, *, daemon: bool = False) -> str:
        """The container's (or with ``daemon``, the host daemon's) last ``tail`` log lines as text.

        Vast asks the host to upload the log and answers with a ``result_url``; this polls it
        (without the API key) until it answers 200, within ``logs_timeout`` seconds of clock time.
        """
        body: dict[str, str] = {"tail": str(int(tail))}
        if daemon:
            body["daemon_logs"] = "true"
        data = await self._call(REQUEST_LOGS, path_id=instance_id, json_body=body)
        url = data.get("result_url") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise VastResponseError("log request answered without a usable result_url", endpoint=REQUEST_LOGS)
        deadline = self._clock.now() + self._logs_timeout
        while True:
            text = await self._fetch_log_result(url)
            if text is not None:
                return text
            if self._clock.now() >= deadline:
                raise VastLogsNotReady(
                    f"the host did not upload the log of instance {instance_id} within "
                    f"{self._logs_timeout:.0f}s (offline or slow host?)",
                    endpoint=REQUEST_LOGS,
                )
            await self._clock.sleep(self._logs_poll_interval)

    async def current_user(self) -> User:
        """The account behind the key (credit, email); the cheapest way to check the key works."""
        data = await self._call(CURRENT_USER)
        if isinstance(data, dict) and isinstance(data.get("user"), dict):
            data = data["user"]
        user = _parse(User, data)
        if user is None:
            raise VastResponseError("current user came back malformed", endpoint=CURRENT_USER)
        return user

    # ------------------------------------------------------------------ internals

    async def _reconcile_create(self, offer_id: int, label: str, err: VastError) -> int:
        log.warning(
            "create of offer %s has an unclear outcome (%s); looking for label %r", offer_id, err.message, label
        )
        for check in range(self._reconcile_checks):
            if check:
                await self._clock.sleep(self._reconcile_interval)
            try:
                instance = await self.find_by_label(label)
            except VastError as check_err:
                raise VastCreateOutcomeUnknown(
                    f"create of offer {offer_id} had an unclear outcome ({err.message}) and looking "
                    f"for label {label!r} failed too ({check_err.message}); check the account "
                    "before renting again",
                    status=err.status,
                    code=err.code,
                    endpoint=CREATE,
                ) from None
            if instance is not None:
                log.warning(
                    "create of offer %s did happen: instance %s carries label %r", offer_id, instance.id, label
                )
                return instance.id
        kwargs: dict[str, Any] = {
            "status": err.status,
            "code": err.code,
            "endpoint": CREATE,
            "attempts": err.attempts,
        }
        raise type(err)(
            f"{err.message}; no instance labelled {label!r} appeared after {self._reconcile_checks} "
            "checks, so nothing was rented",
            **kwargs,
        )

    async def _delete(self, instance_id: int) -> None:
        try:
            await self._call(DESTROY, path_id=instance_id, json_body={})
        except VastNotFound:
            log.info("instance %s was already gone", instance_id)

    async def _fetch_log_result(self, url: str) -> str | None:
        try:
            async with self._paced(LOG_RESULT):
                self.stats[LOG_RESULT] += 1
                response = await self._http.get(url)  # no Authorization: this host is not Vast's API
        except httpx.HTTPError as exc:
            log.debug("log result not reachable yet: %s", type(exc).__name__)
            return None
        if response.status_code != 200:
            return None
        return response.text

    @staticmethod
    def _merge_spacing(overrides: dict[str, float] | None) -> dict[str, float]:
        spacing = dict(DEFAULT_MIN_SPACING)
        if not overrides:
            return spacing
        if "*" in overrides:
            spacing = dict.fromkeys(spacing, float(overrides["*"]))
            spacing["*"] = float(overrides["*"])
        for endpoint, seconds in overrides.items():
            spacing[endpoint] = max(0.0, float(seconds))
        return spacing

    @asynccontextmanager
    async def _paced(self, endpoint: str) -> AsyncIterator[None]:
        """Hold the endpoint's turn: wait until ``spacing`` seconds after the previous call ended.

        Measuring from the end of the previous call keeps the gap at Vast's side at least
        ``spacing`` whatever the latency. Concurrent callers queue by priority: a more urgent call
        that arrives while this one waits out the spacing goes first.
        """
        # Stopping spend never waits behind anything but another urgent call.
        priority = Priority.WATCH if endpoint == DESTROY else self.priority
        turns = self._turns.setdefault(endpoint, _Turns())
        ticket = turns.ticket()
        await turns.take(priority, ticket)
        held, called = True, False
        try:
            while True:
                spacing = self.min_spacing.get(endpoint, self.min_spacing.get("*", 1.0))
                if spacing > 0 and turns.last_done is not None:
                    wait = turns.last_done + spacing - self._clock.now()
                    if wait > 0:
                        await self._clock.sleep(wait)
                if not turns.more_urgent_than(priority):
                    break
                held = False
                turns.give()
                await turns.take(priority, ticket)
                held = True
            called = True
            yield
        finally:
            if called:
                turns.last_done = self._clock.now()
            if held:
                turns.give()

    async def _call(
        self,
        endpoint: str,
        *,
        path_id: int | None = None,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        policy: Policy = "idempotent",
    ) -> Any:
        method, template = endpoint.split(" ", 1)
        path = template.format(id=int(path_id)) if path_id is not None else template
        attempts = 0
        retrying = AsyncRetrying(
            sleep=self._clock.sleep,
            stop=stop_after_attempt(self._max_attempts)
            | _StopAfterClock(self._clock, self._clock.now(), self._max_retry_time),
            wait=wait_random_exponential(
                multiplier=self._backoff_initial, max=self._backoff_max, min=self._backoff_initial / 4
            ),
            retry=retry_if_exception(lambda exc: _retryable(policy, exc)),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    return await self._send_once(endpoint, method, path, params, json_body)
        except VastError as err:
            err.attempts = attempts
            raise
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _send_once(
        self, endpoint: str, method: str, path: str, params: dict[str, Any] | None, json_body: Any
    ) -> Any:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        async with self._paced(endpoint):
            self.stats[endpoint] += 1
            try:
                response = await self._http.request(
                    method, path, params=params, json=json_body, headers=headers
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise VastTransportError(
                    f"could not connect to {self.base_url} ({type(exc).__name__})",
                    request_sent=False,
                    endpoint=endpoint,
                ) from None
            except httpx.TimeoutException as exc:
                raise VastTransportError(
                    f"no answer within {self._timeout:g}s ({type(exc).__name__})", endpoint=endpoint
                ) from None
            except httpx.HTTPError as exc:
                raise VastTransportError(
                    f"connection failed ({type(exc).__name__}: {self._redact(str(exc))})", endpoint=endpoint
                ) from None
        log.debug("Vast %s %s -> %d", method, path, response.status_code)
        text = response.text
        if not 200 <= response.status_code < 300:
            raise self._redacted(error_from_response(response.status_code, text, endpoint=endpoint))
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError:
            raise VastResponseError(
                f"answer is not JSON: {self._redact(text[:120])!r}", status=response.status_code, endpoint=endpoint
            ) from None
        if isinstance(data, dict) and data.get("success") is False:
            raise self._redacted(error_from_response(response.status_code, text, endpoint=endpoint))
        return data

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _redacted(self, err: VastError) -> VastError:
        err.message = self._redact(err.message)
        err.args = (err.message,)
        if isinstance(err, VastAuthError) and not self._api_key:
            err.message += " (no VAST_API_KEY is set)"
        return err


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.info("%s; retry %d in %.1fs", exc, state.attempt_number, state.upcoming_sleep)


_M = TypeVar("_M", Offer, Instance, User)


def _parse(model: type[_M], row: Any) -> _M | None:
    try:
        return model.model_validate(row)
    except ValidationError as exc:
        log.warning("ignoring a malformed %s from Vast (%d problems)", model.__name__, exc.error_count())
        return None
