"""The script, the onstart and the watcher's parser all agree with bot/provisioning/contract.py.

If someone renames an event, a field, the prefix or an env var on one side only, a test here fails.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bot.provisioning import contract
from bot.provisioning.contract import (
    BOOTSTRAP_ATTEMPT,
    DEFAULT_LOG_PATH,
    EVENT_PREFIX,
    EVENTS,
    REQUIRED_FIELDS,
    RUN_DONE_STATUSES,
    SCHEMA_VERSION,
    STATUSES,
)
from bot.provisioning.onstart import onstart_script
from tests.provisioning.stubs import BASH, SCRIPT, Sandbox

SCRIPT_TEXT = SCRIPT.read_text()
ONSTART_TEXT = onstart_script()
# Env vars only the onstart reads (it fetches and verifies the script before the script exists).
ONSTART_ONLY = {contract.ENV_SCRIPT_URL, contract.ENV_SCRIPT_SHA256}
# Reserved in the contract for a bootstrap that deliberately falls back; ours never does.
NOT_EMITTED = {"fallback"}


def code_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def emitted(text: str) -> list[tuple[str, str]]:
    """(event, status) of every ``emit EV ST`` call in the script."""
    return re.findall(r"\bemit ([a-z][a-z._]*) (\"\$\w+\"|[a-z]+)", "\n".join(code_lines(text)))


def test_script_default_prefix_and_schema_match_the_contract() -> None:
    prefix = re.search(r'^PROV_EVENT_PREFIX="\$\{PROV_EVENT_PREFIX:-([^}]*)\}"$', SCRIPT_TEXT, re.M)
    assert prefix is not None and prefix.group(1) == EVENT_PREFIX
    schema = re.search(r"^SCHEMA_V=(\d+)$", SCRIPT_TEXT, re.M)
    assert schema is not None and int(schema.group(1)) == SCHEMA_VERSION


def test_script_line_template_has_the_required_fields_in_order() -> None:
    (template,) = [line for line in SCRIPT_TEXT.splitlines() if line.lstrip().startswith('base="{')]
    assert tuple(re.findall(r'\\"(\w+)\\":', template)) == REQUIRED_FIELDS


def test_every_event_and_literal_status_in_the_script_is_in_the_contract() -> None:
    calls = emitted(SCRIPT_TEXT)
    assert len(calls) > 20, "the emit pattern no longer matches the script"
    for ev, st in calls:
        assert ev in EVENTS, f"script emits {ev!r}, not in contract.EVENTS"
        if not st.startswith('"$'):
            assert st in STATUSES, f"script emits {ev} with status {st!r}, not in contract.STATUSES"
    produced = {ev for ev, _ in calls} | {"script_missing"}
    assert produced == set(EVENTS) - NOT_EMITTED, "an event in the contract is emitted by nothing"
    # run.done's status is computed: it must only ever be one of the contract's run.done statuses.
    on_exit = SCRIPT_TEXT.split("\non_exit() {", 1)[1].split("\n}\n", 1)[0]
    assert set(re.findall(r"\bst=(\w+)", on_exit)) == set(RUN_DONE_STATUSES)
    assert set(RUN_DONE_STATUSES) <= set(STATUSES)


def test_script_reads_every_contract_env_var_and_hard_codes_no_log_path() -> None:
    names = {value for key, value in vars(contract).items() if key.startswith("ENV_")}
    for name in sorted(names - ONSTART_ONLY):
        assert f"${{{name}" in SCRIPT_TEXT or f"${name}" in SCRIPT_TEXT, f"script never reads {name}"
    for name in ONSTART_ONLY | {contract.ENV_LOG_PATH, contract.ENV_RUN_ID, contract.ENV_EVENT_PREFIX}:
        assert f"${{{name}" in ONSTART_TEXT, f"onstart never reads {name}"
    code = "\n".join(code_lines(SCRIPT_TEXT))
    assert DEFAULT_LOG_PATH not in code
    assert not re.findall(r"/[\w./-]+\.log\b", code), "the script must log only to $PROV_LOG_PATH"


def test_onstart_event_matches_the_contract() -> None:
    prefix = re.search(r'P="\$\{PROV_EVENT_PREFIX:-([^}]*)\}"', ONSTART_TEXT)
    assert prefix is not None and prefix.group(1) == EVENT_PREFIX
    template = re.search(r"printf '%s (\{.*\})\\n'", ONSTART_TEXT)
    assert template is not None
    keys = re.findall(r'"(\w+)":', template.group(1))
    assert tuple(keys[: len(REQUIRED_FIELDS)]) == REQUIRED_FIELDS
    assert f'"v":{SCHEMA_VERSION},' in template.group(1) and f'"att":{BOOTSTRAP_ATTEMPT},' in template.group(1)
    assert '"ev":"script_missing"' in template.group(1) and "script_missing" in EVENTS


def test_the_watchers_parser_reads_script_and_onstart_lines(tmp_path: Path) -> None:
    milestones = pytest.importorskip("bot.watch.milestones", reason="the watch engine's parser is not in this tree")
    sandbox = Sandbox.create(tmp_path / "sb")
    sandbox.repo("ComfyUI-X", "numpy\n")
    url = "https://huggingface.co/o/m/resolve/main/m.safetensors"
    sandbox.serve(url, b"\x01" * 4096)
    run = sandbox.run(PROV_NODES="https://github.com/o/ComfyUI-X", PROV_MODELS=f"checkpoints|{url}|1000",
                      STUB_GIT_FAIL="nothing")
    assert run.rc == 0, run.log
    # And one onstart failure line, produced by really running the onstart text.
    log = tmp_path / "onstart" / "provision.log"
    subprocess.run([BASH, "-c", ONSTART_TEXT], env={"PATH": "/usr/bin:/bin", "PROV_LOG_PATH": str(log),
                                                    "PROV_RUN_ID": "r-test1"}, capture_output=True, timeout=30)
    lines = [line for line in (run.log + log.read_text()).splitlines() if line.startswith(EVENT_PREFIX)]
    assert len(lines) > 10 and "script_missing" in lines[-1]
    for line in lines:
        event = milestones.parse_event(line)
        assert event is not None, f"the watcher cannot parse: {line}"
        assert event.known, f"the watcher does not know {event.ev!r}"
        assert event.run == "r-test1" and event.v == SCHEMA_VERSION and event.st in STATUSES
