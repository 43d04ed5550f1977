"""Point discord.py at a local fake Discord, for ``bench/bench_kill9.py``.

That bench runs the real ``python -m bot run`` as a subprocess and kills it with SIGKILL; the
fake Discord lives in the parent process so that only the bot dies. Python imports this module
at start-up when this directory is on PYTHONPATH; it does nothing unless
VASTOPS_FAKE_DISCORD_API is set, and then it only redirects discord.py's REST base URL and
gateway (what the e2e tests' fixture does in-process).
"""

from __future__ import annotations

import os

_api = os.environ.get("VASTOPS_FAKE_DISCORD_API")
if _api:
    import yarl
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    Route.BASE = _api
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["VASTOPS_FAKE_DISCORD_GATEWAY"])
