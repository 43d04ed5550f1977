"""Rehearsal scenarios: one TOML file per scenario in this directory, loaded into typed objects.

A scenario says which offer catalogue the simulator serves, which settings the bot runs with,
when the container runs and SSH answers, what the instance writes to its logs over simulated
time (seconds since the create call), and what the bot must conclude. To add a scenario, drop a
new ``<name>.toml`` here; ``happy.toml`` documents every key with comments.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

# How spending is expected to stop: at the first conclusive signal (one poll later at most), at a
# deadline (stall, unreachable SSH, a missing log past its grace), or not at all (a good rental).
StopKind = Literal["signal", "deadline", "none"]
_STOP_KINDS = ("signal", "deadline", "none")
_VERDICTS = ("ready", "degraded", "failed", "in_progress")
_TARGETS = ("both", "log", "container")


# The script URL's path on the stage's fake gist host: /<user>/<gist id>/raw/<file>.
DEFAULT_SCRIPT_PATH = "/vastops/5f1e0c2a9b7d4e3f8a6c1b2d0e9f7a6c/raw/provision.sh"


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Output:
    """One thing an instance prints: a native line, or one of our ``@@prov`` events."""

    line: str | None = None
    event: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """Something that happens at ``at`` simulated seconds after the create call.

    ``out`` is written to ``target``: ``both`` (the script's log file and the container log, as
    our script's ``tee`` does), ``log`` (the file only) or ``container`` (the container log only:
    the image's own boot lines). ``path`` overrides the script's log file for this step. With
    ``every``, the output repeats every ``every`` seconds until ``until``. ``comfyui`` switches
    the simulated ComfyUI ``up`` (``/system_stats`` answers through SSH) or ``down``.
    """

    at: float
    out: tuple[Output, ...] = ()
    target: str = "both"
    path: str | None = None
    every: float | None = None
    until: float | None = None
    comfyui: Literal["up", "down"] | None = None


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the bot must conclude, checked by the tests and the demo's summary."""

    verdicts: tuple[str, ...]
    category: str | None  # cause category of a failure (None: not checked / no failure)
    stop: StopKind
    signal_at: float | None  # simulated seconds since create of the first conclusive signal
    signal: str = ""  # what that signal is, in words
    finding_contains: tuple[str, ...] = ()  # the conclusive finding's text must name all of these
    advice_contains: tuple[str, ...] = ()  # ... and its advice these
    max_severity: str | None = None  # no finding above this severity (noise must stay noise)
    country_not_in: tuple[str, ...] = ()  # the rented host must not be in these countries
    unique_findings: bool = False  # no finding (same category, line text) is posted twice


@dataclass(frozen=True, slots=True)
class Baseline:
    """What the audit's approach would have spent on the same run."""

    seconds: float
    why: str
    price: Literal["rented", "audit_pick"] = "rented"  # audit_pick: the offer the audit's filter picks
    audit_excluded_countries: tuple[str, ...] = ("UA",)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    audit: str  # which failure of the audit this rehearses
    catalogue: str = "default"
    settings: dict[str, Any] = field(default_factory=dict)
    script_path: str = DEFAULT_SCRIPT_PATH  # path of the script URL on the fake gist host
    script_status: int = 200  # what the gist host answers for that path
    gist_files: tuple[str, ...] = ("provision.sh",)
    script_log: str | None = None  # where the script writes its log (None: the configured path)
    script_body: str | None = None  # what the script URL serves (None: this checkout's deploy/provision.sh)
    running_at: float = 40.0
    ssh_at: float = 45.0
    ssh_never: bool = False
    image_logs: bool = True  # the image's own service logs appear in /var/log/portal/ at boot
    steps: tuple[Step, ...] = ()
    expect: Expectation = field(default_factory=lambda: Expectation(("ready",), None, "none", None))
    baseline: Baseline = field(default_factory=lambda: Baseline(3600.0, ""))
    run_for: float | None = None  # simulated seconds to keep playing after a ready verdict
    notes: str = ""
    # [preflight]: the model/git hosts the preflight meets (bot.sim.hub) and whether it must block the rent.
    preflight: dict[str, Any] = field(default_factory=dict)

    @property
    def preflight_blocks(self) -> bool:
        """The preflight must refuse the rent: nothing is rented, nothing is spent."""
        return bool(self.preflight.get("blocks"))

    @property
    def end_of_script(self) -> float:
        """The last moment the timeline does anything."""
        ends = [s.until if s.every and s.until is not None else s.at for s in self.steps]
        return max(ends, default=0.0)


def _req(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ScenarioError(f"{where}: missing key {key!r}")
    return data[key]


def _out_items(raw: Any, where: str) -> tuple[Output, ...]:
    items: list[Output] = []
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise ScenarioError(f"{where}: 'out' must be a list of lines and event tables")
    for item in raw:
        if isinstance(item, str):
            # A multi-line string is several lines; keep blank lines inside it (wget prints them).
            items.extend(Output(line=part) for part in item.split("\n"))
        elif isinstance(item, dict):
            if "ev" not in item or "st" not in item:
                raise ScenarioError(f"{where}: an event table needs 'ev' and 'st' ({item})")
            items.append(Output(event=dict(item)))
        else:
            raise ScenarioError(f"{where}: cannot print {item!r}")
    return tuple(items)


def _step(raw: dict[str, Any], where: str, snippets: dict[str, Any]) -> Step:
    known = {"at", "out", "text", "target", "path", "every", "until", "comfyui", "snippet"}
    unknown = set(raw) - known
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {sorted(unknown)}")
    out: tuple[Output, ...] = ()
    names = raw.get("snippet", [])
    for name in [names] if isinstance(names, str) else names:
        if name not in snippets:
            raise ScenarioError(f"{where}: no snippet {name!r} in _snippets.toml (known: {sorted(snippets)})")
        snippet = snippets[name]
        out += _out_items(snippet.get("out"), f"{where} snippet {name}")
        if "text" in snippet:
            out += tuple(Output(line=part) for part in str(snippet["text"]).rstrip("\n").split("\n"))
    out += _out_items(raw.get("out"), where)
    if "text" in raw:
        text = str(raw["text"]).rstrip("\n")
        out += tuple(Output(line=part) for part in text.split("\n"))
    target = raw.get("target", "both")
    if target not in _TARGETS:
        raise ScenarioError(f"{where}: target must be one of {_TARGETS}")
    comfyui = raw.get("comfyui")
    if comfyui not in (None, "up", "down"):
        raise ScenarioError(f"{where}: comfyui must be 'up' or 'down'")
    every = raw.get("every")
    if every is not None and float(every) <= 0:
        raise ScenarioError(f"{where}: every must be positive")
    return Step(at=float(_req(raw, "at", where)), out=out, target=target, path=raw.get("path"),
                every=float(every) if every is not None else None,
                until=float(raw["until"]) if "until" in raw else None, comfyui=comfyui)


def parse_scenario(data: dict[str, Any], name: str, snippets: dict[str, Any] | None = None) -> Scenario:
    """Build a ``Scenario`` from a parsed TOML document (``snippets``: named output blocks)."""
    where = f"scenario {name}"
    snippets = load_snippets() if snippets is None else snippets
    preflight = dict(data.get("preflight", {}))
    unknown = set(preflight) - {"blocks", "contains", "file", "repo", "hf_tokens"}
    if unknown:
        raise ScenarioError(f"{where}: unknown [preflight] key(s) {sorted(unknown)}")
    # A rent the preflight refuses never runs: nothing to expect of an instance that never existed.
    blocked = {"verdict": ["in_progress"], "stop": "none"} if preflight.get("blocks") else None
    expect_raw = data.get("expect", blocked) if blocked else _req(data, "expect", where)
    verdicts = expect_raw.get("verdict", ["ready"])
    verdicts = (verdicts,) if isinstance(verdicts, str) else tuple(verdicts)
    for v in verdicts:
        if v not in _VERDICTS:
            raise ScenarioError(f"{where}: expect.verdict {v!r} is not one of {_VERDICTS}")
    stop = expect_raw.get("stop", "none")
    if stop not in _STOP_KINDS:
        raise ScenarioError(f"{where}: expect.stop must be one of {_STOP_KINDS}")
    if expect_raw.get("max_severity") not in (None, "info", "warn", "error", "fatal"):
        raise ScenarioError(f"{where}: expect.max_severity must be info, warn, error or fatal")
    signal_at = expect_raw.get("signal_at")
    if stop != "none" and signal_at is None:
        raise ScenarioError(f"{where}: expect.signal_at is required when spending must stop")
    expect = Expectation(
        verdicts=verdicts, category=expect_raw.get("category") or None, stop=stop,
        signal_at=float(signal_at) if signal_at is not None else None, signal=expect_raw.get("signal", ""),
        finding_contains=tuple(expect_raw.get("finding_contains", ())),
        advice_contains=tuple(expect_raw.get("advice_contains", ())),
        max_severity=expect_raw.get("max_severity"),
        country_not_in=tuple(expect_raw.get("country_not_in", ())),
        unique_findings=bool(expect_raw.get("unique_findings", False)),
    )
    base_raw = _req(data, "baseline", where)
    baseline = Baseline(seconds=float(_req(base_raw, "seconds", f"{where} baseline")),
                        why=str(_req(base_raw, "why", f"{where} baseline")),
                        price=base_raw.get("price", "rented"),
                        audit_excluded_countries=tuple(base_raw.get("audit_excluded_countries", ("UA",))))
    script = data.get("script", {})
    boot = data.get("boot", {})
    steps = tuple(_step(s, f"{where} step {i + 1}", snippets) for i, s in enumerate(data.get("step", [])))
    return Scenario(
        name=str(data.get("name", name)), title=str(_req(data, "title", where)),
        audit=str(data.get("audit", "")), catalogue=str(data.get("catalogue", "default")),
        settings=dict(data.get("settings", {})),
        script_path=str(script.get("path", DEFAULT_SCRIPT_PATH)),
        script_status=int(script.get("status", 200)),
        gist_files=tuple(script.get("gist_files", ("provision.sh",))),
        script_log=script.get("log"), script_body=script.get("body"),
        running_at=float(boot.get("running_at", 40.0)), ssh_at=float(boot.get("ssh_at", 45.0)),
        ssh_never=bool(boot.get("ssh_never", False)), image_logs=bool(boot.get("image_logs", True)),
        steps=tuple(sorted(steps, key=lambda s: s.at)), expect=expect, baseline=baseline,
        run_for=float(data["run_for"]) if "run_for" in data else None, notes=str(data.get("notes", "")),
        preflight=preflight,
    )


# The order the demo plays them in: the audit's failures roughly as the audit tells them.
ORDER = ("happy", "script-404", "gistfile1", "log-path-mismatch", "ssh-refused", "ssh-never", "stall",
         "disk-full", "china-cheapest", "port-noise-only", "slow-fetch", "slow-download", "slow-node-download",
         "ssh-late-progress", "stall-heartbeat",
         "gated-model", "token-401", "disk-too-small", "cuda-incompatible", "torch-node")


def load_snippets() -> dict[str, Any]:
    """Named output blocks shared by scenarios (``_snippets.toml``), used as ``snippet = "name"``."""
    resource = resources.files(__package__).joinpath("_snippets.toml")
    if not resource.is_file():
        return {}
    try:
        data = tomllib.loads(resource.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"_snippets.toml: {exc}") from None
    return dict(data.get("snippet", {}))


def scenario_names() -> list[str]:
    """Every scenario shipped in this package, in demo order (unknown extras last, by name)."""
    found = sorted(p.name.removesuffix(".toml") for p in resources.files(__package__).iterdir()
                   if p.name.endswith(".toml") and not p.name.startswith("_"))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def load_scenario(name: str) -> Scenario:
    """Load ``<name>.toml`` from this package; ``ScenarioError`` if unknown or malformed."""
    resource = resources.files(__package__).joinpath(f"{name}.toml")
    if not resource.is_file():
        raise ScenarioError(f"no scenario named {name!r} (known: {', '.join(scenario_names())})")
    try:
        data = tomllib.loads(resource.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{name}.toml: {exc}") from None
    return parse_scenario(data, name)


def load_all() -> list[Scenario]:
    return [load_scenario(n) for n in scenario_names()]
