"""Numbered SQL migrations shipped with the package, applied in order, each in its own transaction."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

import aiosqlite

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The migration files or the database's schema version are not what this code expects."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Traversable | Path | None = None) -> list[Migration]:
    """Read ``NNNN_name.sql`` files (default: the package's own), checking they number 1..N."""
    root: Traversable | Path = (
        directory if directory is not None else resources.files("bot.db").joinpath("migrations")
    )
    found: list[Migration] = []
    for entry in root.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration files must be numbered 0001 upwards without gaps, found {versions}")
    return found


def split_statements(script: str) -> list[str]:
    """Split a SQL script into single statements (trigger bodies and quoted ``;`` included).

    The script is run statement by statement, because ``executescript`` would commit the
    migration's transaction before running it.
    """
    statements: list[str] = []
    *pieces, tail = script.split(";")
    buffer = ""
    for piece in pieces:
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if not _is_blank(buffer):
                statements.append(buffer.strip())
            buffer = ""
    buffer += tail
    if not _is_blank(buffer):
        raise MigrationError(f"unterminated SQL statement: {buffer.strip()[:200]!r}")
    return statements


def _is_blank(statement: str) -> bool:
    lines = [line.strip() for line in statement.splitlines()]
    code = "".join(line for line in lines if not line.startswith("--"))
    return code.strip(" ;") == ""


async def schema_version(db: aiosqlite.Connection) -> int:
    rows = list(await db.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


async def apply_migrations(db: aiosqlite.Connection, migrations: list[Migration]) -> list[int]:
    """Apply the migrations the database has not seen yet; return the versions applied.

    ``PRAGMA user_version`` is the source of truth (it lives in the database header and so
    commits atomically with the schema change); ``schema_version`` keeps a readable history.
    The version is re-read after ``BEGIN IMMEDIATE`` so two processes opening a fresh file at
    once apply each migration exactly once.
    """
    latest = migrations[-1].version if migrations else 0
    current = await schema_version(db)
    if current > latest:
        raise MigrationError(
            f"the database is at schema version {current}, newer than this code knows ({latest}); "
            "upgrade vastops or use another DATABASE_PATH"
        )
    applied: list[int] = []
    for migration in migrations:
        if migration.version <= current:
            continue
        await db.execute("BEGIN IMMEDIATE")
        try:
            current = await schema_version(db)
            if current >= migration.version:
                await db.execute("COMMIT")
                continue
            for statement in split_statements(migration.sql):
                await db.execute(statement)
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            # applied_at is bookkeeping, not business data, so SQLite's own clock is fine here.
            await db.execute(
                "INSERT INTO schema_version (version, name, applied_at)"
                " VALUES (?, ?, (julianday('now') - 2440587.5) * 86400.0)",
                (migration.version, migration.name),
            )
            # PRAGMA takes no bound parameters; the version is an int from the file name.
            await db.execute(f"PRAGMA user_version = {int(migration.version)}")
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
        current = migration.version
        applied.append(migration.version)
    return applied
