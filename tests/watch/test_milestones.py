"""Milestones: structured event parsing and milestone detection from events and native lines."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.provisioning.contract import EVENT_PREFIX
from bot.watch.milestones import MilestoneParser, ProvEvent, parse_event, strip_query
from bot.watch.model import Milestone


def ev(e: str, st: str, seq: int = 1, att: int = 1, **extra: Any) -> str:
    data = {"v": 1, "run": "r-1", "att": att, "seq": seq, "ts": "2026-02-05T10:00:00Z", "ev": e, "st": st, **extra}
    return EVENT_PREFIX + json.dumps(data, separators=(",", ":"))


def names(parser: MilestoneParser, lines: list[str]) -> list[tuple[str, int | None]]:
    out = []
    for i, line in enumerate(lines, 1):
        out.extend((hit.name.value, hit.line) for hit in parser.feed(line, i))
    return out


# -- parse_event ----------------------------------------------------------------------------------

def test_parse_event_fields_and_extra() -> None:
    got = parse_event(ev("node.reqs", "fail", seq=12, name="ComfyUI-ReActor", rc=1, required=False))
    assert got == ProvEvent(v=1, run="r-1", att=1, seq=12, ts="2026-02-05T10:00:00Z", ev="node.reqs", st="fail",
                            extra={"name": "ComfyUI-ReActor", "rc": 1, "required": False})
    assert got.known and got.key == ("r-1", 1, 12) and got.get("rc") == 1 and got.get("nope", 5) == 5


def test_parse_event_tolerates_a_prefix_before_the_marker() -> None:
    got = parse_event("2026-02-05 10:00:00 " + ev("heartbeat", "ok"))
    assert got is not None and got.ev == "heartbeat"


@pytest.mark.parametrize("line", [
    "",
    "plain text",
    EVENT_PREFIX + '{"v":1,"run":"r","att":1,"seq":2,"ts":"t","ev":"run.done","st":"fail"',  # truncated JSON
    EVENT_PREFIX + '{"v":1,"run":"r","att":1,"seq":2,"ts":"t","ev":"run.done"}',  # missing st
    EVENT_PREFIX + '{"v":1,"run":"r","att":"one","seq":2,"ts":"t","ev":"x","st":"ok"}',  # att not a number
    EVENT_PREFIX + '[1, 2, 3]',
    EVENT_PREFIX + 'not json',
    "@@provx " + '{"v":1}',
    EVENT_PREFIX + '{"v":1,"run":"r","att":1,"seq":2,"ts":"t","ev":5,"st":"ok"}',
])
def test_parse_event_rejects_non_events(line: str) -> None:
    assert parse_event(line) is None


def test_unknown_event_parses_but_is_not_known() -> None:
    got = parse_event(ev("gpu.dance", "ok"))
    assert got is not None and not got.known
    assert MilestoneParser().feed(ev("gpu.dance", "ok"), 1) == []


def test_strip_query() -> None:
    assert strip_query("https://user:pw@x.com/a/b?token=1#f") == "https://x.com/a/b"
    assert strip_query("https://a-b-c.trycloudflare.com") == "https://a-b-c.trycloudflare.com"


# -- from our events --------------------------------------------------------------------------------

def test_event_milestones_in_order() -> None:
    lines = [
        ev("fetch", "ok", 1, what="script", host="gist.githubusercontent.com", path="/x/p.sh", http=200, bytes=21934),
        ev("run.start", "start", 2),
        ev("torch", "ok", 3, ver="2.8.0+cu128", cuda="12.8", available=True, changed=False),
        ev("apt", "ok", 4, n=2),
        ev("pip", "ok", 5, n=3),
        ev("node.clone", "ok", 6, name="A", required=True),
        ev("node.reqs", "ok", 7, name="A", required=True),
        ev("torch", "ok", 8, ver="2.8.0+cu128", changed=False),  # torch probes between nodes keep the stage open
        ev("node.clone", "ok", 9, name="B", required=False),
        ev("node.reqs", "fail", 10, name="B", required=False),
        ev("heartbeat", "ok", 11),
        ev("model.start", "start", 12, name="m"),
        ev("model.done", "ok", 13, name="m"),
        ev("run.done", "ok", 14, step="done", rc=0),
    ]
    parser = MilestoneParser()
    assert names(parser, lines) == [
        ("script_fetched", 1), ("provisioning_started", 2), ("torch_ready", 3), ("packages_installed", 4),
        ("nodes_installed", 12), ("models_downloaded", 13), ("provisioning_complete", 14),
    ]
    assert parser.seen[Milestone.NODES_INSTALLED].detail == {"nodes": 2, "failed": 1}
    assert parser.seen[Milestone.SCRIPT_FETCHED].detail["bytes"] == 21934


def test_nodes_closed_by_run_done_or_nodes_done_marker() -> None:
    parser = MilestoneParser()
    got = names(parser, [ev("node.clone", "ok", 1, name="A"), ev("run.done", "degraded", 2)])
    assert got == [("nodes_installed", 2), ("provisioning_complete", 2)]
    parser = MilestoneParser()
    assert names(parser, [ev("node.clone", "ok", 1, name="A"), ev("nodes.done", "ok", 2)]) == [("nodes_installed", 2)]


def test_failed_run_reports_no_completion() -> None:
    parser = MilestoneParser()
    got = names(parser, [ev("run.start", "start", 1), ev("node.clone", "ok", 2), ev("run.done", "fail", 3)])
    assert got == [("provisioning_started", 1)]


def test_torch_changed_or_unavailable_is_not_torch_ready() -> None:
    for line in (ev("torch", "fail", ver="2.1.0", changed=True), ev("torch", "ok", ver="2.8.0", available=False),
                 ev("torch", "ok", ver="2.8.0", changed=True)):
        assert MilestoneParser().feed(line, 1) == []


@pytest.mark.parametrize("line", [
    ev("fetch", "ok", what="model", bytes=100000),
    ev("fetch", "ok", what="script", http=404, bytes=14),
    ev("fetch", "ok", what="recipe", bytes=14),
    ev("fetch", "fail", what="script"),
])
def test_fetches_that_are_not_a_script(line: str) -> None:
    assert MilestoneParser().feed(line, 1) == []


def test_manifest_fetch_counts() -> None:
    hits = MilestoneParser().feed(ev("fetch", "ok", what="manifest", http=200, bytes=512), 3)
    assert [(h.name, h.line) for h in hits] == [(Milestone.SCRIPT_FETCHED, 3)]


# -- from native lines ------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "milestone", "detail"), [
    ("* Provisioning instance with script from https://gist.githubusercontent.com/u/5f/raw/p.sh?token=abc",
     Milestone.PROVISIONING_STARTED, {"url": "https://gist.githubusercontent.com/u/5f/raw/p.sh"}),
    ("* Provisioning instance with remote script from https://x.com/p.sh", Milestone.PROVISIONING_STARTED,
     {"url": "https://x.com/p.sh"}),
    ("2026-02-05 10:01:02 [INFO] Provisioner starting (version 1)", Milestone.PROVISIONING_STARTED, {}),
    ("Looking for provisioning.sh...", Milestone.PROVISIONING_STARTED, {}),
    ("[INFO] Script saved to /provisioning.sh (21934 bytes)", Milestone.SCRIPT_FETCHED,
     {"path": "/provisioning.sh", "bytes": 21934}),
    ("2026-02-05 10:03:38 (183 MB/s) - ‘/workspace/ComfyUI/models/vae/ae.safetensors’ saved [335304388/335304388]",
     None, {}),
    ("torch version: 2.5.1+cu124", Milestone.TORCH_READY, {"version": "2.5.1+cu124"}),
    ("2.5.1+cu124 True", Milestone.TORCH_READY, {"version": "2.5.1+cu124"}),
    ("[INFO] Pip packages installed successfully", Milestone.PACKAGES_INSTALLED, {}),
    ("APT packages installed successfully", Milestone.PACKAGES_INSTALLED, {}),
    ("Successfully installed accelerate-1.2.1 piexif-1.1.3", Milestone.PACKAGES_INSTALLED, {}),
    ("Installed 12 packages in 1.23s", Milestone.PACKAGES_INSTALLED, {}),
    ("pytorch version: 2.8.0+cu128", Milestone.TORCH_READY, {"version": "2.8.0+cu128"}),
    ("Provisioning complete:  Application will start now", Milestone.PROVISIONING_COMPLETE, {}),
    ("2026-02-05 10:04:52 [INFO] Provisioning complete!", Milestone.PROVISIONING_COMPLETE, {}),
    ("To see the GUI go to: http://127.0.0.1:18188", Milestone.COMFYUI_READY,
     {"url": "http://127.0.0.1:18188", "port": 18188, "needs_http_check": True}),
    ("Default Tunnel started for ComfyUI (http://localhost:8188) - https://calm-river-blue-moon.trycloudflare.com",
     Milestone.TUNNEL_READY, {"url": "https://calm-river-blue-moon.trycloudflare.com",
                              "target": "http://localhost:8188"}),
    ("[http://localhost:8188] 2026-02-05T10:04:33Z INF |  https://calm-river-blue-moon.trycloudflare.com   |",
     Milestone.TUNNEL_READY, {"url": "https://calm-river-blue-moon.trycloudflare.com",
                              "target": "http://localhost:8188"}),
    ("|  https://calm-river-blue-moon.trycloudflare.com   |", Milestone.TUNNEL_READY,
     {"url": "https://calm-river-blue-moon.trycloudflare.com"}),
    ("Named tunnel process started", Milestone.TUNNEL_READY, {"named": True}),
    ("Default Tunnel started for Instance Portal (http://localhost:1111) - https://quiet-lake-red-owl.trycloudflare.com",
     Milestone.PORTAL_READY, {"url": "https://quiet-lake-red-owl.trycloudflare.com", "target": "http://localhost:1111"}),
    ("[http://localhost:1111] 2026-02-05T10:00:50Z INF |  https://quiet-lake-red-owl.trycloudflare.com  |",
     Milestone.PORTAL_READY, {"url": "https://quiet-lake-red-owl.trycloudflare.com", "target": "http://localhost:1111"}),
])
def test_native_milestones(line: str, milestone: Milestone | None, detail: dict[str, Any]) -> None:
    hits = MilestoneParser().feed(line, 5)
    assert [(h.name, h.line, h.detail) for h in hits] == ([(milestone, 5, detail)] if milestone else [])


def test_cpu_torch_is_not_torch_ready() -> None:
    parser = MilestoneParser()
    assert parser.feed("torch version: 2.5.1+cpu", 1) == [] and parser.feed("2.5.1+cpu False", 2) == []


CREATED = "Successfully created /opt/ai-dock/bin/provisioning.sh from https://x.com/p.sh?token=abc"


def test_ai_dock_created_script_counts_once_it_runs() -> None:
    parser = MilestoneParser()
    assert parser.feed(CREATED, 3) == []
    assert parser.feed("dos2unix: converting file /opt/ai-dock/bin/provisioning.sh to Unix format...", 4) == []
    assert [h.name for h in parser.feed("Looking for provisioning.sh...", 5)] == [Milestone.PROVISIONING_STARTED]
    hits = [h for h in parser.feed("Downloading node: https://github.com/ltdrdata/ComfyUI-Manager...", 6)
            if h.name == Milestone.SCRIPT_FETCHED]
    assert [(h.line, h.detail) for h in hits] == [
        (3, {"path": "/opt/ai-dock/bin/provisioning.sh", "url": "https://x.com/p.sh"})]


def test_ai_dock_created_404_body_is_not_script_fetched() -> None:
    parser = MilestoneParser()
    lines = [CREATED, "Looking for provisioning.sh...",
             "/opt/ai-dock/bin/provisioning.sh: line 1: 404:: command not found",
             "#          Provisioning container            #",  # even a banner later (a default script) is not it
             "2026-02-05 10:04:00,100 INFO success: comfyui entered RUNNING state"]
    for i, line in enumerate(lines, 1):
        parser.feed(line, i)
    assert not parser.reached(Milestone.SCRIPT_FETCHED)


def test_script_banner_proves_the_script_was_fetched() -> None:
    parser = MilestoneParser()
    parser.feed("* Provisioning instance with remote script from https://x.com/p.sh", 1)
    hits = parser.feed("#          Provisioning container            #", 2)
    assert [h.name for h in hits] == [Milestone.SCRIPT_FETCHED]


@pytest.mark.parametrize("line", [
    "sd_xl_base_1.0.safetensors  100%[===================>]   6.46G   212MB/s    in 31s",
    "02/05 10:03:12 [NOTICE] Download complete: /workspace/ComfyUI/models/checkpoints/x.safetensors",
    "3f2a1b|OK  |   187MiB/s|/workspace/ComfyUI/models/checkpoints/sd_xl_base_1.0.safetensors",
    "flux1-dev.safetensors: 100%|██████████| 23.8G/23.8G [01:51<00:00, 214MB/s]",
    "100 6616M  100 6616M    0     0   212M      0  0:00:31  0:00:31 --:--:--  220M",
    "2026-02-05 10:03:38 (183 MB/s) - ‘/workspace/ComfyUI/models/vae/ae.safetensors’ saved [335304388/335304388]",
])
def test_native_model_done_shapes(line: str) -> None:
    parser = MilestoneParser()
    parser.feed(line, 1)
    hits = parser.feed("Provisioning complete:  Application will start now", 2)
    assert [h.name for h in hits] == [Milestone.MODELS_DOWNLOADED, Milestone.PROVISIONING_COMPLETE]


def test_relative_clone_inside_custom_nodes_is_node_activity() -> None:
    parser = MilestoneParser()
    for i, line in enumerate(["+ cd /workspace/ComfyUI/custom_nodes", "+ git clone https://github.com/x/y",
                              "Cloning into 'y'...", "+ cd /workspace"], 1):
        parser.feed(line, i)
    hits = parser.feed("Provisioning complete!", 5)
    assert [h.name for h in hits] == [Milestone.NODES_INSTALLED, Milestone.PROVISIONING_COMPLETE]


@pytest.mark.parametrize("line", [
    "[INFO] Script saved to /provisioning.sh (14 bytes)",  # GitHub's "404: Not Found" body
    "[INFO] Script saved to /provisioning.sh (0 bytes)",
    ">>> Instance provisioning is not yet complete",
    "comfyui startup paused until instance provisioning has completed (/.provisioning present)",
    "test -f /.provisioning_complete",
    "Default Tunnel started for Some Other App (http://localhost:7000) - https://x-y.trycloudflare.com",
    "Downloading script from https://x.com/p.sh",
])
def test_lines_that_are_not_milestones(line: str) -> None:
    assert MilestoneParser().feed(line, 1) == []


def test_native_nodes_and_models_stages() -> None:
    lines = [
        "Downloading node: https://github.com/ltdrdata/ComfyUI-Manager...",
        "Cloning into '/workspace/ComfyUI/custom_nodes/ComfyUI-Manager'...",
        "Cloning into '/workspace/ComfyUI/custom_nodes/ComfyUI-ReActor'...",
        "ERROR: Failed building wheel for insightface",
        "Downloading 1 model(s) to /workspace/ComfyUI/models/checkpoints...",
        "Downloading: https://huggingface.co/x/y.safetensors",
        "[INFO] Successfully downloaded: /workspace/ComfyUI/models/checkpoints/y.safetensors",
        "[INFO] File already exists: /workspace/ComfyUI/models/vae/v.safetensors (skipping)",
        "Provisioning complete:  Application will start now",
    ]
    parser = MilestoneParser()
    assert names(parser, lines) == [("nodes_installed", 5), ("models_downloaded", 8), ("provisioning_complete", 9)]
    assert parser.seen[Milestone.NODES_INSTALLED].detail == {"nodes": 2}
    assert parser.seen[Milestone.MODELS_DOWNLOADED].detail == {"models": 2}


def test_comfyui_start_closes_stages_without_provisioning_complete() -> None:
    lines = ["Cloning into '/workspace/ComfyUI/custom_nodes/A'...", "Successfully downloaded: /w/m.safetensors",
             "Import times for custom nodes:"]
    assert names(MilestoneParser(), lines) == [("nodes_installed", 2), ("models_downloaded", 2)]


def test_each_milestone_once() -> None:
    parser = MilestoneParser()
    lines = ["To see the GUI go to: http://0.0.0.0:8188", "To see the GUI go to: http://[::]:8188",
             "pytorch version: 2.8.0", "pytorch version: 2.8.0",
             ev("run.start", "start", 1), ev("run.start", "start", 2)]
    got = names(parser, lines)
    assert got == [("comfyui_ready", 1), ("torch_ready", 3), ("provisioning_started", 5)]
    assert parser.seen[Milestone.COMFYUI_READY].detail["port"] == 8188
    assert parser.reached(Milestone.TORCH_READY) and not parser.reached(Milestone.TUNNEL_READY)
