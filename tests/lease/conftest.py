"""Lease fixtures: the guardrails' worlds (the real bot on the fake Discord, the Vast simulator with
a real SSH server and fake ComfyUI per instance, a real SQLite file, a FakeClock), and the SSH tests'
simulated sshd for reading ComfyUI through a tunnel."""

from tests.e2e.conftest import fake_discord, make_fake_discord  # noqa: F401 (the fake Discord fixtures)
from tests.ssh.conftest import clock, connect, key_path, make_sim, root  # noqa: F401 (the SSH fixtures)
