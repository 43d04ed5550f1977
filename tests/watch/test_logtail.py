"""logtail: /logs's pipeline from each source (live bytes, the stored container-log tail, recorded
events) against a real SQLite store; the same cleaning and redaction as the watcher."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.db import Store
from bot.watch.classifier import Classifier, load_rules
from bot.watch.logtail import (
    SOURCE_CONTAINER,
    SOURCE_EVENTS,
    THREAD_THRESHOLD,
    WatchView,
    lines_from_bytes,
    lines_from_stored,
    log_tail,
)
from bot.watch.redact import Redactor

TOKEN = "hf_" + "FakeLogtailToken0123456789abcdefgh"
KEY = ["-----BEGIN OPENSSH PRIVATE KEY-----", *[f"FAKE{i:02d}" + "Tm90QVJlYWxLZXk" * 4 for i in range(6)],
       "-----END OPENSSH PRIVATE KEY-----"]
MARK = "«redacted:private-key»"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await Store.open(tmp_path / "bot.db") as opened:
        yield opened


async def _rental(store: Store) -> int:
    rental = await store.create_rental(label="vastops-logtail", requester_id=1, requester_name="ann",
                                       offer_id=1, quoted_dph=0.1, now=1000.0)
    return rental.id


def test_bytes_go_through_the_line_pipeline() -> None:
    split = TOKEN[:10] + "\x1b[31m" + TOKEN[10:] + "\x1b[0m"
    data = f"0%\r50%\r100%\nlogin {split} ok\nbad \xff byte\n".encode("latin-1")
    out = lines_from_bytes(data, Redactor({"HF_TOKEN": TOKEN}), mid_file=False)
    assert out == ["100%", "login «redacted:HF_TOKEN» ok", "bad \ufffd byte"]


def test_a_mid_file_window_drops_its_cut_first_line_and_hides_the_key_it_starts_in() -> None:
    data = ("RL" + KEY[2][2:] + "\n" + "\n".join(KEY[3:]) + "\nafter\n").encode()
    out = lines_from_bytes(data, Redactor(), mid_file=True)
    assert out == [MARK] * (len(KEY) - 3) + ["after"]
    # The same bytes read from the start of the file are not a key tail: nothing to hide but the END.
    assert lines_from_bytes(b"plain\n" + data, Redactor(), mid_file=False)[0] == "plain"


def test_stored_lines_are_cleaned_and_redacted_statefully() -> None:
    stored = [*KEY[3:], "\x1b[32mready\x1b[0m", f"token={TOKEN}"]
    assert lines_from_stored(stored, Redactor()) == [MARK] * (len(KEY) - 3) + ["ready", "token=«redacted»"]
    assert lines_from_stored([], Redactor()) == []


async def test_stored_container_tail_from_the_database(store: Store) -> None:
    rental_id = await _rental(store)
    await store.save_watch_state(rental_id, log_offset=0, log_path=None, host_key=None, ssh_endpoint=None,
                                 data={"fallback_tail": [*KEY[4:], f"\x1b[1mERROR\x1b[0m: auth {TOKEN} failed"]},
                                 now=1.0)
    tail = await log_tail(WatchView(), store, rental_id, redactor=Redactor({"HF_TOKEN": TOKEN}), lines=50)
    assert tail.source == SOURCE_CONTAINER
    assert tail.lines == [MARK] * (len(KEY) - 4) + ["ERROR: auth «redacted:HF_TOKEN» failed"]


async def test_events_when_nothing_else(store: Store) -> None:
    rental_id = await _rental(store)
    await store.append_event(rental_id, kind="milestone", payload={"name": "ssh_ready", "line": 3}, ts=0.0)
    await store.append_event(rental_id, kind="finding", payload={"severity": "error", "category": "auth",
                                                                 "text": f"401 for {TOKEN}"}, ts=60.0)
    tail = await log_tail(WatchView(), store, rental_id, redactor=Redactor(), lines=1)
    assert tail.source == SOURCE_EVENTS
    assert tail.lines == ["00:01:00 ERROR auth: 401 for «redacted:hf»"]


async def test_errors_only_filters_after_redaction(store: Store) -> None:
    rental_id = await _rental(store)
    stored = ["Collecting torch", f"ERROR: Could not install packages due to an OSError: {TOKEN}", "done"]
    tail = await log_tail(WatchView(fallback_tail=stored), store, rental_id, redactor=Redactor(),
                          classifier=Classifier(load_rules()), lines=10, errors_only=True)
    assert tail.lines == ["ERROR: Could not install packages due to an OSError: «redacted:hf»"]


@dataclass
class _Chunk:
    data: bytes
    rotated: bool = False
    missing: bool = False


class _Log:
    """An in-memory log file answering like the SSH session's ``read_new``."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []

    async def read_new(self, path: str, offset: int, *, max_bytes: int = 1 << 20) -> _Chunk:
        self.reads.append((offset, max_bytes))
        return _Chunk(self.data[offset:offset + max_bytes])


class _ThreadNoting(Redactor):
    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def redact_lines(self, lines: object, *, mid_stream: bool = False) -> list[str]:
        self.threads.add(threading.get_ident())
        return super().redact_lines(lines, mid_stream=mid_stream)  # type: ignore[arg-type]


async def test_big_windows_are_redacted_off_the_event_loop(store: Store) -> None:
    rental_id = await _rental(store)
    data = b"".join(b"line %05d of a long provisioning log\n" % i for i in range(40_000))
    assert len(data) > THREAD_THRESHOLD
    log = _Log(data)
    redactor = _ThreadNoting()
    tail = await log_tail(WatchView(reader=log, path="/x.log", end=len(data)), store, rental_id,
                          redactor=redactor, lines=5000)
    assert tail.lines[-1] == "line 39999 of a long provisioning log" and len(tail.lines) == 5000
    assert threading.get_ident() not in redactor.threads and redactor.threads
    assert log.reads[0][0] == len(data) - 5000 * 256  # the window ends at the watcher's offset


LOG = ("Cloning into 'x'...\n" + "\n".join(KEY) + "\nssh-keygen: done\nRequirement already satisfied: torch\n"
       ).encode()


@settings(max_examples=300, deadline=None)
@given(start=st.integers(min_value=0, max_value=len(LOG)), end=st.integers(min_value=0, max_value=len(LOG)))
def test_no_window_of_a_log_shows_key_material(start: int, end: int) -> None:
    # A /logs window starts anywhere (lines x 256 bytes back) and ends where the watcher has read.
    start, end = min(start, end), max(start, end)
    out = "\n".join(lines_from_bytes(LOG[start:end], Redactor(), mid_file=start > 0))
    for body in KEY[1:-1]:
        for i in range(0, len(body) - 7):
            assert body[i:i + 8] not in out, (start, end, out)
