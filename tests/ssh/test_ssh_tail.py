"""Incremental tail over SFTP against the simulated instance: offsets, partial lines, rotation,
missing logs and discovery of the one that exists, raw bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.provisioning.contract import DEFAULT_LOG_PATH
from bot.watch.ssh import LogCandidate, SshLogSession, best_alternative_log

LOG = "/workspace/provision_v3.log"


def append(root: Path, remote: str, data: bytes) -> None:
    with open(root / remote.lstrip("/"), "ab") as f:
        f.write(data)


async def test_each_read_returns_exactly_the_appended_bytes(session: SshLogSession, root: Path) -> None:
    steps = [
        b"[INFO] Provisioner starting (version 1)\n",
        b"--- Phase 3: APT packages ---\nInstalling 3 apt pack",  # ends mid-line
        b"ages: git wget aria2\n",
        b"x" * 100_000 + b"\n",
        b"\r 42%|####      | 10.2G/23.8G\r 43%|####      | 10.3G/23.8G",  # progress bar, no newline
    ]
    offset = 0
    for data in steps:
        append(root, LOG, data)
        chunk = await session.read_new(LOG, offset)
        assert chunk.data == data
        assert chunk.new_offset == offset + len(data) == chunk.size
        assert not chunk.rotated and not chunk.missing and chunk.behind == 0
        offset = chunk.new_offset
    quiet = await session.read_new(LOG, offset)
    assert (quiet.data, quiet.new_offset, quiet.rotated, quiet.missing) == (b"", offset, False, False)


async def test_partial_last_line_comes_back_as_bytes(session: SshLogSession, root: Path) -> None:
    append(root, LOG, b"complete line\nhalf a li")
    first = await session.read_new(LOG, 0)
    assert first.data.endswith(b"half a li") and first.new_offset == 23
    append(root, LOG, b"ne\n")
    assert (await session.read_new(LOG, first.new_offset)).data == b"ne\n"


async def test_invalid_utf8_passes_through_untouched(session: SshLogSession, root: Path) -> None:
    raw = b"ok \xff\xfe\x80 \xc3( \xe2\x82 caf\xc3\xa9 \x1b[31mred\x1b[0m\r\n\x00tail"
    append(root, LOG, raw)
    assert (await session.read_new(LOG, 0)).data == raw


async def test_max_bytes_caps_a_poll_and_the_next_poll_continues(session: SshLogSession, root: Path) -> None:
    data = os.urandom(10_000)
    append(root, LOG, data)
    first = await session.read_new(LOG, 0, max_bytes=4096)
    assert first.data == data[:4096] and first.new_offset == 4096 and first.behind == 10_000 - 4096
    rest = await session.read_new(LOG, first.new_offset, max_bytes=1 << 20)
    assert first.data + rest.data == data and rest.behind == 0


async def test_replaced_by_shorter_file_is_rotation_read_from_zero(
    session: SshLogSession, root: Path
) -> None:
    append(root, LOG, b"old line\n" * 100)
    offset = (await session.read_new(LOG, 0)).new_offset
    # log-tee style: a new, shorter file at the same path (new inode).
    tmp = root / "workspace" / "tmp.new"
    tmp.write_bytes(b"fresh start\n")
    os.replace(tmp, root / LOG.lstrip("/"))
    chunk = await session.read_new(LOG, offset)
    assert chunk.rotated and not chunk.missing
    assert chunk.data == b"fresh start\n" and chunk.new_offset == 12 == chunk.size
    append(root, LOG, b"more\n")
    nxt = await session.read_new(LOG, chunk.new_offset)
    assert nxt.data == b"more\n" and not nxt.rotated


async def test_truncated_in_place_is_rotation(session: SshLogSession, root: Path) -> None:
    append(root, LOG, b"a" * 500)
    offset = (await session.read_new(LOG, 0)).new_offset
    os.truncate(root / LOG.lstrip("/"), 0)
    empty = await session.read_new(LOG, offset)
    assert empty.rotated and empty.data == b"" and empty.new_offset == 0
    append(root, LOG, b"bbb")
    assert (await session.read_new(LOG, 0)).data == b"bbb"


async def test_missing_log_and_the_one_that_exists_is_found(session: SshLogSession, root: Path) -> None:
    # The audit's failure: the collector reads provision_core.log, the script writes provision_v3.log.
    configured = "/workspace/provision_core.log"
    append(root, LOG, b"[INFO] Provisioner starting\n")
    (root / "workspace" / "vastops").mkdir()
    append(root, DEFAULT_LOG_PATH, b"")  # empty: exists but says nothing
    append(root, "/var/log/portal/provisioning.log", b"\x1b[32mok\x1b[0m\n")
    append(root, "/var/log/provisioning.log", b"ok\n")
    append(root, "/var/log/syslog.log", b"not a provisioning log\n")
    (root / "workspace" / "ComfyUI" / "models").mkdir(parents=True)
    append(root, "/workspace/ComfyUI/models/model.safetensors", b"weights")
    (root / "workspace" / "dir.log").mkdir()  # a directory named like a log is not a log

    chunk = await session.read_new(configured, 17)
    assert chunk.missing and chunk.data == b"" and chunk.new_offset == 17 and not chunk.rotated

    found = await session.list_candidate_logs()
    paths = [c.path for c in found]
    assert paths == sorted(
        [LOG, DEFAULT_LOG_PATH, "/var/log/portal/provisioning.log", "/var/log/provisioning.log"]
    )
    sizes = {c.path: c.size for c in found}
    assert sizes[LOG] == 28 and sizes[DEFAULT_LOG_PATH] == 0
    assert all(c.mtime is not None for c in found)

    os.utime(root / LOG.lstrip("/"), (2_000_000_000, 2_000_000_000))  # the freshest one
    best = best_alternative_log(configured, await session.list_candidate_logs())
    assert best is not None and best.path == LOG


async def test_candidate_patterns_are_configurable_and_missing_dirs_are_fine(
    session: SshLogSession, root: Path
) -> None:
    append(root, "/workspace/a.txt", b"1")
    append(root, "/workspace/b.log", b"22")
    found = await session.list_candidate_logs(["/workspace/*.txt", "/nope/*/*.log", "/workspace/b.log"])
    assert [(c.path, c.size) for c in found] == [("/workspace/a.txt", 1), ("/workspace/b.log", 2)]
    assert await session.list_candidate_logs(["/opt/none/*.log"]) == []


async def test_sftp_is_chrooted_to_the_instance_root(session: SshLogSession, root: Path) -> None:
    (root.parent / "outside.log").write_bytes(b"host secret\n")
    chunk = await session.read_new("/../outside.log", 0)
    assert chunk.missing and chunk.data == b""


async def test_marker_files(session: SshLogSession, root: Path) -> None:
    assert not await session.exists("/.provisioning_complete")
    (root / ".provisioning_complete").touch()
    assert await session.exists("/.provisioning_complete")


async def test_bad_arguments_are_rejected(session: SshLogSession) -> None:
    with pytest.raises(ValueError):
        await session.read_new(LOG, -1)
    with pytest.raises(ValueError):
        await session.read_new(LOG, 0, max_bytes=0)


def test_best_alternative_prefers_provision_named_then_newest() -> None:
    cands = [
        LogCandidate("/var/log/portal/comfyui.log", 9_000, 300.0),
        LogCandidate("/workspace/provision_v3.log", 100, 100.0),
        LogCandidate("/var/log/provisioning.log", 50, 200.0),
        LogCandidate("/workspace/provision_core.log", 0, 400.0),
    ]
    assert best_alternative_log("/workspace/provision_core.log", cands) == cands[2]
    assert best_alternative_log("/x.log", [LogCandidate("/x.log", 5, 1.0)]) is None
    assert best_alternative_log("/x.log", [LogCandidate("/y.log", 0, 1.0)]) is None
