"""Migrations, schema version and connection pragmas of the state store."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.db import Migration, MigrationError, Store, load_migrations
from bot.db.schema import split_statements

EXPECTED_TABLES = {"rentals", "events", "approvals", "hosts", "cost_samples", "watch_state", "schema_version"}


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def test_package_ships_numbered_migrations() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "initial"
    assert "CREATE TABLE rentals" in migrations[0].sql


async def test_migrations_applied_once_and_recorded(db_path: Path) -> None:
    latest = load_migrations()[-1].version
    async with await Store.open(db_path) as store:
        assert await store.schema_version() == latest
    for _ in range(2):
        async with await Store.open(db_path) as store:
            assert await store.schema_version() == latest
    with _raw(db_path) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        history = raw.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()
        (user_version,) = raw.execute("PRAGMA user_version").fetchone()
    assert EXPECTED_TABLES <= tables
    assert history == [(m.version, m.name) for m in load_migrations()]
    assert user_version == latest


async def test_concurrent_first_opens_apply_each_migration_once(db_path: Path) -> None:
    stores = await asyncio.gather(*(Store.open(db_path) for _ in range(4)))
    for store in stores:
        await store.close()
    with _raw(db_path) as raw:
        assert raw.execute("SELECT count(*) FROM schema_version").fetchone() == (len(load_migrations()),)


async def test_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "db.sqlite"
    async with await Store.open(str(path)):
        pass
    assert path.is_file()


async def test_pragmas_wal_foreign_keys_synchronous_busy_timeout(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        pragmas = await store.pragmas()
    assert pragmas["journal_mode"] == "wal"
    assert pragmas["foreign_keys"] == 1
    assert pragmas["synchronous"] == 2  # FULL
    assert pragmas["busy_timeout"] == 10_000
    async with await Store.open(db_path, synchronous="NORMAL", busy_timeout=2.5) as store:
        pragmas = await store.pragmas()
    assert pragmas["synchronous"] == 1
    assert pragmas["busy_timeout"] == 2_500


async def test_failed_migration_rolls_back_completely(db_path: Path) -> None:
    initial = load_migrations()[:1]
    broken = Migration(2, "broken", "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n")
    with pytest.raises(sqlite3.OperationalError):
        await Store.open(db_path, migrations=[*initial, broken])
    with _raw(db_path) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert raw.execute("PRAGMA user_version").fetchone() == (1,)
        assert raw.execute("SELECT max(version) FROM schema_version").fetchone() == (1,)
    assert "half_done" not in tables
    assert "rentals" in tables

    fixed = Migration(2, "fixed", "CREATE TABLE half_done (x INTEGER);")
    async with await Store.open(db_path, migrations=[*initial, fixed]) as store:
        assert await store.schema_version() == 2


async def test_database_newer_than_code_is_refused(db_path: Path) -> None:
    initial = load_migrations()[:1]
    extra = Migration(2, "future", "CREATE TABLE future_thing (x INTEGER);")
    async with await Store.open(db_path, migrations=[*initial, extra]):
        pass
    with pytest.raises(MigrationError, match="newer"):
        await Store.open(db_path, migrations=initial)


def test_migration_files_must_be_contiguous(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x);")
    (tmp_path / "0003_c.sql").write_text("CREATE TABLE c (x);")
    (tmp_path / "README.md").write_text("not a migration")
    with pytest.raises(MigrationError, match="without gaps"):
        load_migrations(tmp_path)
    (tmp_path / "0002_b.sql").write_text("CREATE TABLE b (x);")
    assert [(m.version, m.name) for m in load_migrations(tmp_path)] == [(1, "a"), (2, "b"), (3, "c")]


def test_split_statements_keeps_triggers_strings_and_comments_whole() -> None:
    script = """
    -- the caller's comment; with a semicolon and an apostrophe
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
        UPDATE t SET x = 'c;d' WHERE rowid = new.rowid;
        SELECT 1;
    END;
    -- trailing comment only
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[0].endswith("CREATE TABLE t (x TEXT DEFAULT 'a;b');")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(MigrationError, match="unterminated"):
        split_statements("CREATE TABLE t (x);\nCREATE TABLE u (y)")


async def test_closed_store_refuses_work(db_path: Path) -> None:
    store = await Store.open(db_path)
    await store.close()
    await store.close()  # idempotent
    from bot.db import StoreError

    with pytest.raises(StoreError, match="closed"):
        await store.get_rental(1)
