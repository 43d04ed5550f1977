"""The ``web`` fixture: a ``WebServer`` on 127.0.0.1 serving canned routes for one test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.provisioning.helpers import WebServer


@pytest.fixture
def web() -> Iterator[WebServer]:
    server = WebServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


