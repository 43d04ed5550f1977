"""One assertion of the event contract, applied to every line any test sees from the script or onstart."""

from __future__ import annotations

import json

from bot.provisioning.contract import EVENT_PREFIX, EVENTS, REQUIRED_FIELDS, SCHEMA_VERSION, STATUSES

MAX_LINE_BYTES = 1024


def assert_contract_lines(text: str, *, run_id: str) -> list[dict]:
    """Parse every prefixed line of ``text`` and assert it follows bot/provisioning/contract.py."""
    events: list[dict] = []
    for line in text.splitlines():
        if not line.startswith(EVENT_PREFIX):
            # A stray partial prefix would mean the script and the watcher disagree on the format.
            assert EVENT_PREFIX.strip() not in line, f"malformed event line: {line!r}"
            continue
        assert len(line.encode()) < MAX_LINE_BYTES, f"event line over 1 KB: {line[:120]}..."
        assert line.isascii() and "\r" not in line, line
        event = json.loads(line[len(EVENT_PREFIX):])
        missing = [f for f in REQUIRED_FIELDS if f not in event]
        assert not missing, f"{line}: missing {missing}"
        assert event["v"] == SCHEMA_VERSION, line
        assert event["run"] == run_id, line
        assert event["ev"] in EVENTS, f"unknown event {event['ev']!r} (add it to contract.EVENTS)"
        assert event["st"] in STATUSES, f"unknown status {event['st']!r} in {line}"
        assert isinstance(event["seq"], int) and isinstance(event["att"], int), line
        for value in event.values():
            if isinstance(value, str) and "://" in value:
                assert "?" not in value and "@" not in value.split("://", 1)[1].split("/", 1)[0], line
        events.append(event)
    return events


def assert_seq_monotonic(events: list[dict]) -> None:
    """Within one attempt seq counts 1, 2, 3... with no gap or duplicate."""
    by_att: dict[int, list[int]] = {}
    for event in events:
        by_att.setdefault(event["att"], []).append(event["seq"])
    for att, seqs in by_att.items():
        assert seqs == list(range(1, len(seqs) + 1)), f"attempt {att}: seq {seqs}"
