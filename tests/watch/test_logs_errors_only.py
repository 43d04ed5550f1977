"""/logs errors_only keeps warnings and worse and the unrecognised error-word lines, never noise."""

from __future__ import annotations

from bot.watch.classifier import Classifier, load_rules
from bot.watch.logtail import only_problems


def test_errors_only_shows_info_unknown_lines_but_not_noise_or_ordinary_lines() -> None:
    lines = ["Error: remote port forwarding failed for listen port 34656",  # noise
             "Cloning into '/workspace/ComfyUI/custom_nodes/x'...",  # ordinary
             "Job failed after 3 tries, using the cache",  # unknown at info
             "ValueError: bad value",  # unknown at warn
             "ERROR: No matching distribution found for foo==1"]  # a rule, error
    assert only_problems(lines, Classifier(load_rules())) == lines[2:]
