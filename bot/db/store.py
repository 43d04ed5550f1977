"""The SQLite state store: one aiosqlite connection and small typed repository methods (all SQL lives here)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiosqlite

from bot.db.models import (
    ACTIVE_STATES,
    OPEN_STATES,
    TERMINAL_STATES,
    Approval,
    ApprovalKind,
    ApprovalStatus,
    CostSample,
    Event,
    HostOutcome,
    HostRecord,
    Rental,
    RentalState,
    WatchState,
)
from bot.db.schema import Migration, apply_migrations, load_migrations, schema_version

# Re-exported so callers can catch constraint failures (duplicate label, missing rental) without
# importing sqlite3 themselves.
IntegrityError = sqlite3.IntegrityError


class StoreError(RuntimeError):
    """The store cannot do what was asked (not a constraint failure: see ``IntegrityError``)."""


class DatabasePathError(StoreError):
    """DATABASE_PATH cannot hold the bot's database: a directory, no write access, not SQLite, corrupted.

    A configuration problem (restarting will not fix it): ``problem`` says what is wrong with
    ``path``, ``fix`` what the operator should do.
    """

    def __init__(self, path: Path, problem: str, fix: str, *, corrupted: bool = False) -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        self.corrupted = corrupted
        super().__init__(f"DATABASE_PATH={path}: {problem}")

    def operator_message(self) -> str:
        return f"DATABASE_PATH={self.path}: {self.problem}. Fix: {self.fix}"


SQLITE_HEADER = b"SQLite format 3\x00"


def _recovery_fix(path: Path) -> str:
    return (f"recover what is readable with `sqlite3 {path} .recover | sqlite3 {path}.recovered` and point "
            f"DATABASE_PATH at {path}.recovered, or start a new file (move {path} aside): instances the bot "
            "created carry its label, and `python -m bot status` lists every instance the database does not "
            "know as untracked (still billing; `python -m bot destroy INSTANCE` removes one)")


def _unwritable_fix(where: Path) -> str:
    return (f"give the user running the bot write access to {where} (e.g. `sudo chown -R $(id -un) {where}`), "
            "or point DATABASE_PATH at a writable location")


def database_path_problem(path: Path, *, must_exist: bool = False) -> DatabasePathError | None:
    """What makes ``path`` unusable as the database, found without creating or changing anything."""
    path = Path(path)
    if path.is_dir():
        return DatabasePathError(path, "is a directory, not a file",
                                 f"set DATABASE_PATH to a file inside it, e.g. {path / 'vastops.db'}")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return DatabasePathError(path, "is not readable and writable by this user", _unwritable_fix(path))
        try:
            with path.open("rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as exc:
            return DatabasePathError(path, f"cannot be read ({exc.strerror})", _unwritable_fix(path))
        if header and header != SQLITE_HEADER:
            return DatabasePathError(path, "is not an SQLite database (some other file is at that path)",
                                     "point DATABASE_PATH at the bot's database, or at a new file name; "
                                     "do not reuse this file")
        parent = path.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            # SQLite creates the -wal and -shm files beside the database.
            return DatabasePathError(path, f"its directory {parent} is not writable by this user "
                                     "(SQLite keeps -wal/-shm files beside the database)", _unwritable_fix(parent))
        return None
    if must_exist:
        return DatabasePathError(path, "does not exist", "check DATABASE_PATH, or run the bot once to create it")
    # The nearest existing ancestor decides whether the missing directories and the file can be made.
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return DatabasePathError(path, f"{ancestor} is a file, so no directory can be created there",
                                 "point DATABASE_PATH at a location under a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        what = "the file" if ancestor == path.parent else f"the directory {path.parent}"
        return DatabasePathError(path, f"{ancestor} is not writable by this user, so {what} cannot be created",
                                 _unwritable_fix(ancestor))
    return None


def _database_error(path: Path, exc: sqlite3.DatabaseError) -> DatabasePathError | None:
    """The file's fault, as a configuration error; None for any other failure (e.g. a migration's SQL)."""
    text = str(exc)
    if "not a database" in text:
        return DatabasePathError(path, "is not an SQLite database", "point DATABASE_PATH at the bot's database, "
                                 "or at a new file name")
    if "readonly" in text or "unable to open" in text or "disk I/O" in text:
        return DatabasePathError(path, f"cannot be written ({text})", _unwritable_fix(path.parent))
    if "malformed" in text or "corrupt" in text:
        return DatabasePathError(path, f"is corrupted ({text})", _recovery_fix(path), corrupted=True)
    return None


class NotFoundError(StoreError, LookupError):
    """The row asked for does not exist."""


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """Row counts for status output and benchmarks."""

    rentals_by_state: dict[RentalState, int]
    pending_approvals: int
    unposted_events: int
    events: int

    @property
    def rentals(self) -> int:
        return sum(self.rentals_by_state.values())

    @property
    def active_rentals(self) -> int:
        return sum(n for state, n in self.rentals_by_state.items() if state in ACTIVE_STATES)


def _columns(model: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(model))


def _real_columns(model: type) -> frozenset[str]:
    # RETURNING hands back a REAL column's integral value (1.0) as an int; rows must not
    # depend on which statement produced them, so these are coerced to float.
    return frozenset(f.name for f in fields(model) if str(f.type).startswith("float"))


def _coerce_reals(values: dict[str, Any], reals: frozenset[str]) -> dict[str, Any]:
    for name in reals:
        if values[name] is not None:
            values[name] = float(values[name])
    return values


_RENTAL_COLS = _columns(Rental)
_EVENT_COLS = _columns(Event)
_APPROVAL_COLS = _columns(Approval)
_HOST_COLS = _columns(HostRecord)
_COST_COLS = _columns(CostSample)
_WATCH_COLS = _columns(WatchState)
_RENTAL_REALS = _real_columns(Rental)
_EVENT_REALS = _real_columns(Event)
_APPROVAL_REALS = _real_columns(Approval)
_HOST_REALS = _real_columns(HostRecord)
_COST_REALS = _real_columns(CostSample)
_WATCH_REALS = _real_columns(WatchState)

# Columns update_rental may set. Not id/label/created_at (identity; the label is how a lost
# create is reconciled with Vast), not state/state_reason (only transition_rental moves state, so
# every state change is conditional), not updated_at (always ``now``).
RENTAL_UPDATABLE_FIELDS: frozenset[str] = frozenset(_RENTAL_COLS) - {
    "id",
    "label",
    "created_at",
    "updated_at",
    "state",
    "state_reason",
}
_JSON_RENTAL_FIELDS = frozenset({"request"})

# SQLite's default limit of bound parameters is far above this; chunks keep statements small.
_CHUNK = 500


def _dumps(value: Mapping[str, Any]) -> str:
    if not isinstance(value, Mapping):
        raise TypeError(f"a JSON payload must be a mapping, not {type(value).__name__}")
    # ensure_ascii=False keeps non-ASCII text readable in the file; allow_nan=False because
    # NaN is not JSON and json_valid() would reject the row anyway.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _select(cols: tuple[str, ...]) -> str:
    return ", ".join(cols)


def _rental(row: Sequence[Any]) -> Rental:
    values = _coerce_reals(dict(zip(_RENTAL_COLS, row, strict=True)), _RENTAL_REALS)
    values["state"] = RentalState(values["state"])
    values["request"] = json.loads(values["request"])
    return Rental(**values)


def _event(row: Sequence[Any]) -> Event:
    values = _coerce_reals(dict(zip(_EVENT_COLS, row, strict=True)), _EVENT_REALS)
    values["payload"] = json.loads(values["payload"])
    return Event(**values)


def _approval(row: Sequence[Any]) -> Approval:
    values = _coerce_reals(dict(zip(_APPROVAL_COLS, row, strict=True)), _APPROVAL_REALS)
    values["kind"] = ApprovalKind(values["kind"])
    values["status"] = ApprovalStatus(values["status"])
    values["payload"] = json.loads(values["payload"])
    return Approval(**values)


def _host(row: Sequence[Any]) -> HostRecord:
    return HostRecord(**_coerce_reals(dict(zip(_HOST_COLS, row, strict=True)), _HOST_REALS))


def _cost(row: Sequence[Any]) -> CostSample:
    return CostSample(**_coerce_reals(dict(zip(_COST_COLS, row, strict=True)), _COST_REALS))


def _watch(row: Sequence[Any]) -> WatchState:
    values = _coerce_reals(dict(zip(_WATCH_COLS, row, strict=True)), _WATCH_REALS)
    values["data"] = json.loads(values["data"])
    return WatchState(**values)


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def _join_worker(pending: aiosqlite.Connection) -> None:
    """Wait for a failed connection's worker thread to finish.

    When aiosqlite's connect fails it queues a stop and returns at once; if the event loop then
    closes (a CLI command exiting), the thread's reply lands on a closed loop and prints
    "RuntimeError: Event loop is closed". Joining first lets it answer while the loop still runs.
    """
    thread = getattr(pending, "_thread", None)
    if thread is not None and thread.is_alive():
        await asyncio.to_thread(thread.join, 5.0)


async def _switch_to_wal(db: aiosqlite.Connection, busy_timeout: float) -> list[Any]:
    """``PRAGMA journal_mode=WAL``, retried: on a brand-new file, several processes opening at
    once can get SQLITE_BUSY here without SQLite's busy handler being consulted."""
    deadline = asyncio.get_running_loop().time() + busy_timeout
    while True:
        try:
            return list(await db.execute_fetchall("PRAGMA journal_mode = WAL"))
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.02)  # real time: this waits on another process's file lock


class Store:
    """The bot's persistent state in one SQLite file.

    One aiosqlite connection per Store. Every operation holds ``_lock`` so that a write
    transaction (several awaits on the shared connection) is never interleaved with another
    coroutine's statements; writes run in ``BEGIN IMMEDIATE`` transactions, which take SQLite's
    write lock up front, so other processes or Store instances wait (``busy_timeout``) instead of
    failing with a stale snapshot. ``transaction()`` groups several repository calls into one
    all-or-nothing unit.
    """

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()
        # The task inside transaction(); its nested repository calls join that transaction.
        self._owner: asyncio.Task[Any] | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "FULL",
        busy_timeout: float = 10.0,
        migrations: list[Migration] | None = None,
    ) -> Store:
        """Open (creating if needed) the database at ``path`` and bring its schema up to date.

        ``synchronous=FULL`` (the default) fsyncs the WAL at every commit. With NORMAL a
        process crash is still safe, but a power loss may roll back the last commits, and the
        commits here precede spending money: a rolled-back "approved" or "creating" row after
        Vast already made the instance would be a billing instance the bot does not know, or an
        approval honoured twice. Our write rate (a few rows per poll) makes the fsync cheap.
        """
        path = Path(path)
        problem = await asyncio.to_thread(database_path_problem, path)
        if problem is not None:
            raise problem
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabasePathError(path, f"cannot create the directory {path.parent} ({exc.strerror})",
                                    _unwritable_fix(path.parent)) from None
        # isolation_level=None: the sqlite3 module opens no implicit transactions; we issue
        # BEGIN IMMEDIATE / COMMIT ourselves.
        pending = aiosqlite.connect(path, isolation_level=None)
        try:
            db = await pending
        except sqlite3.DatabaseError as exc:
            await _join_worker(pending)
            mapped = _database_error(path, exc)
            if mapped is None:
                raise
            raise mapped from None
        except BaseException:
            await _join_worker(pending)
            raise
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            rows = await _switch_to_wal(db, busy_timeout)
            if str(rows[0][0]).lower() != "wal":
                raise StoreError(f"could not switch {path} to WAL mode (got {rows[0][0]!r})")
            await db.execute("PRAGMA foreign_keys = ON")
            if synchronous not in ("NORMAL", "FULL"):
                raise ValueError("synchronous must be NORMAL or FULL")
            await db.execute(f"PRAGMA synchronous = {synchronous}")
            await apply_migrations(db, migrations if migrations is not None else load_migrations())
        except sqlite3.DatabaseError as exc:
            await db.close()
            mapped = _database_error(path, exc)
            if mapped is None:
                raise
            raise mapped from None
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

    async def quick_check(self) -> list[str]:
        """``PRAGMA quick_check``: [] when the file is sound, else SQLite's findings (at most 20)."""
        async with self._lock:
            rows = await self._db.execute_fetchall("PRAGMA quick_check(20)")
        found = [str(row[0]) for row in rows]
        return [] if found == ["ok"] else found

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._closed:
            return
        async with self._lock:
            self._closed = True
            # No "PRAGMA optimize"/ANALYZE: our data is skewed (a few active rentals among
            # thousands of destroyed ones), and averaged statistics make the planner scan the
            # whole table for active_rentals() instead of using the state index.
            await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ transactions

    def _in_own_transaction(self) -> bool:
        return self._owner is not None and self._owner is asyncio.current_task()

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._in_own_transaction():
            yield self._db
            return
        async with self._lock:
            self._check_open()
            yield self._db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Self]:
        """Run the repository calls made inside the block as one all-or-nothing transaction.

        Keep only store calls inside (the write lock is held, other processes wait), and do not
        start other tasks that use this Store from inside: they would wait for the block to end.
        A nested ``transaction()`` in the same task joins the outer one.
        """
        if self._in_own_transaction():
            yield self
            return
        async with self._lock:
            self._check_open()
            try:
                await self._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                await self._rollback()
                raise
            self._owner = asyncio.current_task()
            try:
                yield self
            except BaseException:
                self._owner = None
                await self._rollback()
                raise
            self._owner = None
            try:
                await self._db.execute("COMMIT")
            except BaseException:
                await self._rollback()
                raise

    _writing = transaction

    async def _rollback(self) -> None:
        # Queued behind whatever statement was in flight (aiosqlite runs them in order), so it
        # also undoes a BEGIN whose await was cancelled. Shielded so a second cancellation cannot
        # leave the shared connection inside a transaction. "No transaction is active" is fine:
        # SQLite ends the transaction itself on some errors, or a cancelled COMMIT went through.
        try:
            await asyncio.shield(self._db.execute("ROLLBACK"))
        except sqlite3.OperationalError:
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._reading() as db:
            return list(await db.execute_fetchall(sql, params))

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def _write_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._writing():
            return list(await self._db.execute_fetchall(sql, params))

    # ------------------------------------------------------------------ introspection

    async def schema_version(self) -> int:
        """The applied migration version (``PRAGMA user_version``)."""
        async with self._reading() as db:
            return await schema_version(db)

    async def pragmas(self) -> dict[str, Any]:
        """This connection's journal_mode, foreign_keys, synchronous, busy_timeout, user_version."""
        result: dict[str, Any] = {}
        async with self._reading() as db:
            for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout", "user_version"):
                rows = list(await db.execute_fetchall(f"PRAGMA {name}"))
                result[name] = rows[0][0]
        return result

    async def check_integrity(self) -> list[str]:
        """Problems found by ``integrity_check`` and ``foreign_key_check``; empty when healthy."""
        async with self._reading() as db:
            integrity = [str(r[0]) for r in await db.execute_fetchall("PRAGMA integrity_check")]
            fk = list(await db.execute_fetchall("PRAGMA foreign_key_check"))
        problems = [line for line in integrity if line != "ok"]
        problems += [f"foreign key: {tuple(row)}" for row in fk]
        return problems

    async def counts(self) -> StoreCounts:
        """Rentals per state, pending approvals, undelivered and total events."""
        async with self._reading() as db:
            by_state = {
                RentalState(state): int(n)
                for state, n in await db.execute_fetchall("SELECT state, count(*) FROM rentals GROUP BY state")
            }
            (pending,) = next(
                iter(await db.execute_fetchall("SELECT count(*) FROM approvals WHERE status = 'pending'"))
            )
            (unposted,) = next(
                iter(await db.execute_fetchall("SELECT count(*) FROM events WHERE posted_at IS NULL"))
            )
            (events,) = next(iter(await db.execute_fetchall("SELECT count(*) FROM events")))
        return StoreCounts(by_state, int(pending), int(unposted), int(events))

    # ------------------------------------------------------------------ rentals

    async def create_rental(
        self,
        *,
        label: str,
        requester_id: int | None,
        requester_name: str | None,
        offer_id: int | None,
        quoted_dph: float | None,
        now: float,
        state: RentalState = RentalState.REQUESTED,
        state_reason: str | None = None,
        machine_id: int | None = None,
        host_id: int | None = None,
        gpu_name: str | None = None,
        num_gpus: int | None = None,
        dph_total: float | None = None,
        geolocation: str | None = None,
        instance_id: int | None = None,
        request: Mapping[str, Any] | None = None,
        started_at: float | None = None,
        comfyui_url: str | None = None,
        tunnel_url: str | None = None,
        status_channel_id: int | None = None,
        status_message_id: int | None = None,
    ) -> Rental:
        """Insert a rental; raises ``IntegrityError`` if the label (or instance id) is taken."""
        values: dict[str, Any] = {
            "label": label,
            "requester_id": requester_id,
            "requester_name": requester_name,
            "offer_id": offer_id,
            "machine_id": machine_id,
            "host_id": host_id,
            "gpu_name": gpu_name,
            "num_gpus": num_gpus,
            "quoted_dph": quoted_dph,
            "dph_total": dph_total,
            "geolocation": geolocation,
            "instance_id": instance_id,
            "state": RentalState(state).value,
            "state_reason": state_reason,
            "request": _dumps(request or {}),
            "created_at": now,
            "updated_at": now,
            "started_at": started_at,
            "ended_at": now if RentalState(state) in TERMINAL_STATES else None,
            "comfyui_url": comfyui_url,
            "tunnel_url": tunnel_url,
            "status_channel_id": status_channel_id,
            "status_message_id": status_message_id,
        }
        rows = await self._write_fetchall(
            f"INSERT INTO rentals ({', '.join(values)}) VALUES ({_placeholders(len(values))})"
            f" RETURNING {_select(_RENTAL_COLS)}",
            tuple(values.values()),
        )
        return _rental(rows[0])

    async def get_rental(self, rental_id: int) -> Rental | None:
        row = await self._fetchone(f"SELECT {_select(_RENTAL_COLS)} FROM rentals WHERE id = ?", (rental_id,))
        return _rental(row) if row else None

    async def get_rental_by_label(self, label: str) -> Rental | None:
        row = await self._fetchone(f"SELECT {_select(_RENTAL_COLS)} FROM rentals WHERE label = ?", (label,))
        return _rental(row) if row else None

    async def get_rental_by_instance(self, instance_id: int) -> Rental | None:
        row = await self._fetchone(
            f"SELECT {_select(_RENTAL_COLS)} FROM rentals WHERE instance_id = ?", (instance_id,)
        )
        return _rental(row) if row else None

    async def list_rentals(
        self,
        *,
        states: Iterable[RentalState] | None = None,
        requester_id: int | None = None,
        limit: int = 100,
    ) -> list[Rental]:
        """Rentals newest first, optionally only in ``states`` and/or of one requester."""
        where: list[str] = []
        params: list[Any] = []
        if states is not None:
            wanted = sorted({RentalState(s).value for s in states})
            if not wanted:
                return []
            where.append(f"state IN ({_placeholders(len(wanted))})")
            params += wanted
        if requester_id is not None:
            where.append("requester_id = ?")
            params.append(requester_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._fetchall(
            f"SELECT {_select(_RENTAL_COLS)} FROM rentals {clause} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [_rental(r) for r in rows]

    async def active_rentals(self) -> list[Rental]:
        """Every rental that may be billing (``ACTIVE_STATES``), oldest first, without a limit."""
        wanted = sorted(s.value for s in ACTIVE_STATES)
        rows = await self._fetchall(
            f"SELECT {_select(_RENTAL_COLS)} FROM rentals WHERE state IN ({_placeholders(len(wanted))})"
            " ORDER BY id",
            wanted,
        )
        return [_rental(r) for r in rows]

    async def update_rental(self, rental_id: int, *, now: float, **fields: Any) -> Rental:
        """Set columns from ``RENTAL_UPDATABLE_FIELDS`` (and ``updated_at = now``); return the row.

        Raises ``ValueError`` for any other name (state moves only via ``transition_rental``)
        and ``NotFoundError`` if the rental does not exist.
        """
        unknown = set(fields) - RENTAL_UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"update_rental cannot set {sorted(unknown)}")
        values = {
            name: (_dumps(value) if name in _JSON_RENTAL_FIELDS else value) for name, value in fields.items()
        }
        values["updated_at"] = now
        assignments = ", ".join(f"{name} = ?" for name in values)
        rows = await self._write_fetchall(
            f"UPDATE rentals SET {assignments} WHERE id = ? RETURNING {_select(_RENTAL_COLS)}",
            (*values.values(), rental_id),
        )
        if not rows:
            raise NotFoundError(f"no rental {rental_id}")
        return _rental(rows[0])

    async def transition_rental(
        self,
        rental_id: int,
        *,
        to: RentalState,
        now: float,
        expected: Iterable[RentalState] | None = None,
        reason: str | None = None,
    ) -> Rental | None:
        """Move a rental to ``to`` if its current state is in ``expected`` (any state if None).

        One conditional UPDATE, so two racing callers cannot both move it. ``state_reason`` is
        replaced by ``reason``; entering a terminal state records ``ended_at`` once. Returns the
        updated row, or None if the rental does not exist or was not in an expected state.
        """
        target = RentalState(to)
        params: list[Any] = [target.value, reason, now, target in TERMINAL_STATES, now, rental_id]
        condition = ""
        if expected is not None:
            wanted = sorted({RentalState(s).value for s in expected})
            if not wanted:
                return None
            condition = f" AND state IN ({_placeholders(len(wanted))})"
            params += wanted
        rows = await self._write_fetchall(
            "UPDATE rentals SET state = ?, state_reason = ?, updated_at = ?,"
            " ended_at = CASE WHEN ? THEN coalesce(ended_at, ?) ELSE ended_at END"
            f" WHERE id = ?{condition} RETURNING {_select(_RENTAL_COLS)}",
            params,
        )
        return _rental(rows[0]) if rows else None

    async def search_rentals_for_autocomplete(
        self,
        requester_id: int | None,
        prefix: str,
        limit: int = 25,
        *,
        states: Iterable[RentalState] = OPEN_STATES,
    ) -> list[Rental]:
        """A requester's rentals (everyone's if None) whose label contains ``prefix``.

        Labels starting with the text come first, then newest first. Only ``states`` (by
        default every non-terminal state) are listed.
        """
        wanted = sorted({RentalState(s).value for s in states})
        if not wanted:
            return []
        text = prefix.strip()
        params: list[Any] = [*wanted]
        where = f"state IN ({_placeholders(len(wanted))})"
        if requester_id is not None:
            where += " AND requester_id = ?"
            params.append(requester_id)
        order = "id DESC"
        if text:
            where += " AND label LIKE ? ESCAPE '\\'"
            params.append(f"%{_like_escape(text)}%")
            order = "(label LIKE ? ESCAPE '\\') DESC, id DESC"
            params.append(f"{_like_escape(text)}%")
        rows = await self._fetchall(
            f"SELECT {_select(_RENTAL_COLS)} FROM rentals WHERE {where} ORDER BY {order} LIMIT ?",
            (*params, limit),
        )
        return [_rental(r) for r in rows]

    # ------------------------------------------------------------------ events

    async def append_event(
        self, rental_id: int, *, kind: str, payload: Mapping[str, Any], ts: float
    ) -> Event:
        """Store an event with the rental's next sequence number (1, 2, 3... without gaps).

        The next number is computed in the same statement as the insert, inside a
        ``BEGIN IMMEDIATE`` transaction, so concurrent appenders (other coroutines, Stores or
        processes) are serialized and never collide. Raises ``IntegrityError`` for an unknown
        rental.
        """
        rows = await self._write_fetchall(
            "INSERT INTO events (rental_id, seq, ts, kind, payload)"
            " SELECT ?, coalesce(max(seq), 0) + 1, ?, ?, ? FROM events WHERE rental_id = ?"
            f" RETURNING {_select(_EVENT_COLS)}",
            (rental_id, ts, kind, _dumps(payload), rental_id),
        )
        return _event(rows[0])

    async def events_for(
        self,
        rental_id: int,
        after_seq: int = 0,
        kinds: Iterable[str] | None = None,
        *,
        limit: int | None = None,
    ) -> list[Event]:
        """A rental's events with ``seq > after_seq`` in sequence order, optionally only ``kinds``."""
        params: list[Any] = [rental_id, after_seq]
        where = "rental_id = ? AND seq > ?"
        if kinds is not None:
            wanted = sorted(set(kinds))
            if not wanted:
                return []
            where += f" AND kind IN ({_placeholders(len(wanted))})"
            params += wanted
        params.append(-1 if limit is None else limit)
        rows = await self._fetchall(
            f"SELECT {_select(_EVENT_COLS)} FROM events WHERE {where} ORDER BY seq LIMIT ?", params
        )
        return [_event(r) for r in rows]

    async def unposted_events(self, limit: int = 100, rental_id: int | None = None) -> list[Event]:
        """Events the notifier has not delivered yet, in (rental_id, seq) order."""
        if rental_id is None:
            rows = await self._fetchall(
                f"SELECT {_select(_EVENT_COLS)} FROM events WHERE posted_at IS NULL"
                " ORDER BY rental_id, seq LIMIT ?",
                (limit,),
            )
        else:
            rows = await self._fetchall(
                f"SELECT {_select(_EVENT_COLS)} FROM events WHERE posted_at IS NULL AND rental_id = ?"
                " ORDER BY seq LIMIT ?",
                (rental_id, limit),
            )
        return [_event(r) for r in rows]

    async def mark_posted(self, event_ids: Iterable[int], *, now: float) -> int:
        """Record delivery of these events; returns how many were not already marked."""
        ids = list(dict.fromkeys(event_ids))
        changed = 0
        if not ids:
            return 0
        async with self._writing():
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                rows = await self._db.execute_fetchall(
                    f"UPDATE events SET posted_at = ? WHERE id IN ({_placeholders(len(chunk))})"
                    " AND posted_at IS NULL RETURNING id",
                    (now, *chunk),
                )
                changed += len(list(rows))
        return changed

    async def last_seq(self, rental_id: int) -> int:
        """The rental's highest event sequence number, 0 if it has none."""
        row = await self._fetchone("SELECT coalesce(max(seq), 0) FROM events WHERE rental_id = ?", (rental_id,))
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ approvals

    async def create_approval(
        self,
        *,
        kind: ApprovalKind,
        requester_id: int | None,
        payload: Mapping[str, Any],
        now: float,
        expires_at: float,
        rental_id: int | None = None,
        default_action: str | None = None,
        channel_id: int | None = None,
        message_id: int | None = None,
    ) -> Approval:
        """Insert a pending approval (revision 1)."""
        rows = await self._write_fetchall(
            "INSERT INTO approvals (kind, rental_id, requester_id, payload, status, created_at, expires_at,"
            " default_action, channel_id, message_id) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)"
            f" RETURNING {_select(_APPROVAL_COLS)}",
            (
                ApprovalKind(kind).value,
                rental_id,
                requester_id,
                _dumps(payload),
                now,
                expires_at,
                default_action,
                channel_id,
                message_id,
            ),
        )
        return _approval(rows[0])

    async def get_approval(self, approval_id: int) -> Approval | None:
        row = await self._fetchone(
            f"SELECT {_select(_APPROVAL_COLS)} FROM approvals WHERE id = ?", (approval_id,)
        )
        return _approval(row) if row else None

    async def decide_approval(
        self,
        approval_id: int,
        *,
        status: ApprovalStatus,
        by_id: int,
        by_name: str,
        now: float,
        note: str | None = None,
        revision: int | None = None,
    ) -> bool:
        """Approve, deny or cancel a pending, unexpired approval: True for exactly one caller.

        A single conditional UPDATE (``status = 'pending' AND expires_at > now``, and the quote
        ``revision`` when given, so a button bound to an older quote cannot approve a new one);
        two deciders racing on any number of connections get one True between them.
        """
        decided = ApprovalStatus(status)
        if decided in (ApprovalStatus.PENDING, ApprovalStatus.EXPIRED):
            raise ValueError(f"decide_approval cannot set {decided}; expiry is expire_due_approvals()")
        params: list[Any] = [decided.value, now, by_id, by_name, note, approval_id, now]
        condition = ""
        if revision is not None:
            condition = " AND revision = ?"
            params.append(revision)
        rows = await self._write_fetchall(
            "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, decided_by_name = ?,"
            " decision_note = ? WHERE id = ? AND status = 'pending' AND expires_at > ?"
            f"{condition} RETURNING id",
            params,
        )
        return bool(rows)

    async def expire_due_approvals(self, now: float) -> list[Approval]:
        """Mark every pending approval with ``expires_at <= now`` expired; return exactly those.

        Conditional like ``decide_approval``: an approval decided a moment earlier is not
        expired, and two expirers never both return the same approval.
        """
        rows = await self._write_fetchall(
            "UPDATE approvals SET status = 'expired', decided_at = ?"
            " WHERE status = 'pending' AND expires_at <= ?"
            f" RETURNING {_select(_APPROVAL_COLS)}",
            (now, now),
        )
        return sorted((_approval(r) for r in rows), key=lambda a: (a.expires_at, a.id))

    async def set_approval_message(self, approval_id: int, channel_id: int, message_id: int) -> bool:
        """Remember where the approval's buttons were posted; False if there is no such approval."""
        rows = await self._write_fetchall(
            "UPDATE approvals SET channel_id = ?, message_id = ? WHERE id = ? RETURNING id",
            (channel_id, message_id, approval_id),
        )
        return bool(rows)

    async def pending_approvals(
        self, *, kind: ApprovalKind | None = None, rental_id: int | None = None
    ) -> list[Approval]:
        """Pending approvals (expired-but-not-yet-swept ones included), soonest expiry first."""
        where = "status = 'pending'"
        params: list[Any] = []
        if kind is not None:
            where += " AND kind = ?"
            params.append(ApprovalKind(kind).value)
        if rental_id is not None:
            where += " AND rental_id = ?"
            params.append(rental_id)
        rows = await self._fetchall(
            f"SELECT {_select(_APPROVAL_COLS)} FROM approvals WHERE {where} ORDER BY expires_at, id", params
        )
        return [_approval(r) for r in rows]

    async def approvals_for_rental(self, rental_id: int) -> list[Approval]:
        """Every approval about a rental, oldest first."""
        rows = await self._fetchall(
            f"SELECT {_select(_APPROVAL_COLS)} FROM approvals WHERE rental_id = ? ORDER BY id", (rental_id,)
        )
        return [_approval(r) for r in rows]

    async def requote_approval(
        self,
        approval_id: int,
        payload: Mapping[str, Any],
        now: float,
        expires_at: float,
        *,
        from_statuses: Iterable[ApprovalStatus] = (ApprovalStatus.PENDING,),
    ) -> Approval | None:
        """Replace the quote: new payload and expiry, status back to pending, revision + 1.

        Conditional on the current status being in ``from_statuses`` (pending by default; the
        approval service may pass ``APPROVED`` when the winner of ``decide_approval`` found the
        offer gone or dearer). Clears the previous decision. Returns None if the condition
        failed. ``now`` is accepted for symmetry with the other writers; the row keeps its
        ``created_at``.
        """
        del now
        wanted = sorted({ApprovalStatus(s).value for s in from_statuses})
        if not wanted:
            return None
        rows = await self._write_fetchall(
            "UPDATE approvals SET payload = ?, expires_at = ?, status = 'pending', revision = revision + 1,"
            " decided_at = NULL, decided_by = NULL, decided_by_name = NULL, decision_note = NULL"
            f" WHERE id = ? AND status IN ({_placeholders(len(wanted))})"
            f" RETURNING {_select(_APPROVAL_COLS)}",
            (_dumps(payload), expires_at, approval_id, *wanted),
        )
        return _approval(rows[0]) if rows else None

    # ------------------------------------------------------------------ hosts

    async def record_host_outcome(
        self,
        *,
        machine_id: int,
        host_id: int | None,
        geolocation: str | None,
        outcome: HostOutcome | str,
        reason: str | None,
        now: float,
        rental_id: int | None = None,
    ) -> HostRecord:
        """Append to a machine's history (``outcome`` ``failed`` puts it on the avoid list)."""
        rows = await self._write_fetchall(
            "INSERT INTO hosts (rental_id, machine_id, host_id, geolocation, outcome, reason, ts)"
            f" VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {_select(_HOST_COLS)}",
            (rental_id, machine_id, host_id, geolocation, str(outcome), reason, now),
        )
        return _host(rows[0])

    async def machines_to_avoid(self, since: float) -> list[int]:
        """Machine ids with a ``failed`` outcome at or after ``since``, ascending."""
        rows = await self._fetchall(
            "SELECT DISTINCT machine_id FROM hosts WHERE outcome = ? AND ts >= ? ORDER BY machine_id",
            (HostOutcome.FAILED.value, since),
        )
        return [int(r[0]) for r in rows]

    async def host_history(self, machine_id: int, limit: int = 50) -> list[HostRecord]:
        """A machine's recorded outcomes, newest first."""
        rows = await self._fetchall(
            f"SELECT {_select(_HOST_COLS)} FROM hosts WHERE machine_id = ? ORDER BY ts DESC, id DESC LIMIT ?",
            (machine_id, limit),
        )
        return [_host(r) for r in rows]

    # ------------------------------------------------------------------ costs

    async def add_cost_sample(self, rental_id: int, *, ts: float, dph: float, cost_usd: float) -> CostSample:
        rows = await self._write_fetchall(
            f"INSERT INTO cost_samples (rental_id, ts, dph, cost_usd) VALUES (?, ?, ?, ?)"
            f" RETURNING {_select(_COST_COLS)}",
            (rental_id, ts, dph, cost_usd),
        )
        return _cost(rows[0])

    async def latest_cost(self, rental_id: int) -> CostSample | None:
        """The rental's most recent cost sample (by ``ts``), or None."""
        row = await self._fetchone(
            f"SELECT {_select(_COST_COLS)} FROM cost_samples WHERE rental_id = ? ORDER BY ts DESC, id DESC"
            " LIMIT 1",
            (rental_id,),
        )
        return _cost(row) if row else None

    # ------------------------------------------------------------------ watch state

    async def get_watch_state(self, rental_id: int) -> WatchState | None:
        row = await self._fetchone(
            f"SELECT {_select(_WATCH_COLS)} FROM watch_state WHERE rental_id = ?", (rental_id,)
        )
        return _watch(row) if row else None

    async def save_watch_state(
        self,
        rental_id: int,
        *,
        log_offset: int,
        log_path: str | None,
        host_key: str | None,
        ssh_endpoint: str | None,
        data: Mapping[str, Any],
        now: float,
    ) -> WatchState:
        """Insert or replace the rental's resume state.

        To keep the offset and the events read up to it consistent across a crash, call this
        and ``append_event`` inside one ``transaction()``.
        """
        rows = await self._write_fetchall(
            "INSERT INTO watch_state (rental_id, log_offset, log_path, host_key, ssh_endpoint, data, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (rental_id) DO UPDATE SET log_offset = excluded.log_offset,"
            " log_path = excluded.log_path, host_key = excluded.host_key,"
            " ssh_endpoint = excluded.ssh_endpoint, data = excluded.data, updated_at = excluded.updated_at"
            f" RETURNING {_select(_WATCH_COLS)}",
            (rental_id, log_offset, log_path, host_key, ssh_endpoint, _dumps(data), now),
        )
        return _watch(rows[0])
