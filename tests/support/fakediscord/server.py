"""A small local Discord (REST under /api/v10 and a JSON gateway, on loopback) for the unmodified discord.py."""

# Test helpers take a `timeout=` argument on purpose: it reads best at the call site.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from bot.clock import Clock, SystemClock

from .model import FakeInteraction, RecordedRequest, StoredMessage, walk_components
from .validate import (
    EPHEMERAL,
    LOADING,
    SUPPRESS_EMBEDS,
    Errors,
    Pings,
    mention_pings,
    nest_errors,
    validate_choices,
    validate_commands,
    validate_message,
    validate_modal,
)

API = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
GUILD_MESSAGES_INTENT = 1 << 9
DM_MESSAGES_INTENT = 1 << 12
# View channel, send, embed links, attach files, read history, add reactions, external emojis, app commands.
BOT_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 6) | (1 << 18) | (1 << 31)
EVERYONE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 16) | (1 << 6) | (1 << 31)
# Which initial response types Discord accepts for each interaction type.
# Flags a response or followup may set: ephemeral, suppress embeds, suppress notifications, components v2.
SETTABLE_FLAGS = EPHEMERAL | SUPPRESS_EMBEDS | (1 << 12) | (1 << 15)
ALLOWED_RESPONSES = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}
Reply = tuple[int, Any]  # (status, JSON body or None for 204)
BODY = web.RequestKey("fake_discord_body", object)  # parsed JSON (or payload_json of a multipart body)
UPLOADS = web.RequestKey("fake_discord_uploads", list)


class DiscordError(Exception):
    """An API error reply: ``{"message", "code", ["errors"]}`` with an HTTP status."""

    def __init__(self, status: int, code: int, message: str, errors: Errors | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code}
        if errors:
            self.body["errors"] = nest_errors(errors)


def invalid_form(errors: Errors) -> DiscordError:
    return DiscordError(400, 50035, "Invalid Form Body", errors)


def _json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    if body is None:
        return web.Response(status=204, headers=dict(headers or {}))
    # discord.py only parses JSON when Content-Type is exactly "application/json" (no charset suffix).
    return web.Response(status=status, body=json.dumps(body).encode(),
                        headers={"Content-Type": "application/json", **(headers or {})})


@dataclass
class _Upload:
    field: str
    filename: str
    data: bytes


@dataclass
class _RateLimit:
    method: str
    pattern: re.Pattern[str]
    remaining: int
    retry_after: float
    is_global: bool


class _Gateway:
    """One websocket connection from a client."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.lock = asyncio.Lock()
        self.session_id: str | None = None
        self.seq = 0
        self.intents = 0
        self.identified = False

    async def send(self, op: int, d: Any, t: str | None = None) -> None:
        async with self.lock:
            seq = None
            if op == 0:
                self.seq += 1
                seq = self.seq
            await self.ws.send_str(json.dumps({"op": op, "d": d, "s": seq, "t": t}))


class FakeDiscord:
    """Stored guild, channels, roles, members, messages and commands, served to one bot at a time (or more)."""

    def __init__(
        self,
        *,
        app_id: int,
        guild_id: int,
        channels: Iterable[int] | Mapping[int, str],
        roles: Iterable[int] | Mapping[int, str] = (),
        interaction_ack_deadline: float = 3.0,
        token_lifetime: float = 900.0,
        attachment_size_limit: int = 10 * 1024 * 1024,
        bot_token: str | None = None,
        bot_name: str = "vastops",
        clock: Clock | None = None,
    ) -> None:
        self.app_id, self.guild_id = app_id, guild_id
        self.interaction_ack_deadline = interaction_ack_deadline  # mutable: tests may shrink it
        self.token_lifetime = token_lifetime
        self.attachment_size_limit = attachment_size_limit
        self.bot_token = bot_token  # None accepts any token
        self.clock: Clock = clock or SystemClock()
        self._counter = itertools.count(1)
        self.bot_user: dict[str, Any] = self._user(app_id, bot_name, bot=True)
        self.users: dict[int, dict[str, Any]] = {app_id: self.bot_user}
        self.bot_role_id = self.snowflake()
        names = roles if isinstance(roles, Mapping) else {r: f"role-{r}" for r in roles}
        self.roles: dict[int, dict[str, Any]] = {guild_id: self._role(guild_id, "@everyone", EVERYONE_PERMISSIONS)}
        self.roles[self.bot_role_id] = self._role(self.bot_role_id, bot_name, BOT_PERMISSIONS, managed=True)
        for rid, name in names.items():
            self.add_role(rid, name)
        self.members: dict[int, list[int]] = {app_id: [self.bot_role_id]}
        self.channels: dict[int, dict[str, Any]] = {}
        self.messages: dict[int, list[StoredMessage]] = {}
        self.dm_channels: dict[int, dict[str, Any]] = {}  # user id -> DM channel payload
        ch_names = channels if isinstance(channels, Mapping) else {c: f"channel-{i}" for i, c in enumerate(channels)}
        for cid, name in ch_names.items():
            self.add_channel(cid, name)
        self._by_id: dict[int, StoredMessage] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: list[dict[str, Any]] = []
        self._command_ids: dict[tuple[int | None, int, str], int] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self._by_token: dict[str, FakeInteraction] = {}
        self.requests: list[RecordedRequest] = []
        self.unhandled: list[RecordedRequest] = []  # calls to routes the fake does not model
        self.gateway_connects: list[dict[str, str]] = []  # query of each websocket connect
        self.gateway_events: list[str] = []  # "IDENTIFY", "RESUME", "RESUME-REFUSED", "REQUEST_MEMBERS"
        self._gateways: set[_Gateway] = set()
        self._sessions: dict[str, int] = {}
        self._rate_limits: list[_RateLimit] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ----- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{cid}/{aid}/{name}", self._attachment)
        routes: list[tuple[str, str, Callable[..., Awaitable[Reply]]]] = [
            ("GET", "/users/@me", self._get_me),
            ("GET", "/users/{uid}", self._get_user),
            ("POST", "/users/@me/channels", self._create_dm),
            ("GET", "/oauth2/applications/@me", self._get_app),
            ("GET", "/applications/@me", self._get_app),
            ("GET", "/gateway", self._get_gateway),
            ("GET", "/gateway/bot", self._get_gateway),
            ("GET", "/applications/{app}/commands", self._get_commands),
            ("PUT", "/applications/{app}/commands", self._put_commands),
            ("GET", "/applications/{app}/guilds/{gid}/commands", self._get_commands),
            ("PUT", "/applications/{app}/guilds/{gid}/commands", self._put_commands),
            ("POST", "/interactions/{iid}/{token}/callback", self._callback),
            ("POST", "/webhooks/{app}/{token}", self._followup),
            ("GET", "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message),
            ("PATCH", "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message),
            ("DELETE", "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message),
            ("GET", "/channels/{cid}", self._get_channel),
            ("GET", "/channels/{cid}/messages", self._history),
            ("POST", "/channels/{cid}/messages", self._post_message),
            ("GET", "/channels/{cid}/messages/{mid}", self._channel_message),
            ("PATCH", "/channels/{cid}/messages/{mid}", self._channel_message),
            ("DELETE", "/channels/{cid}/messages/{mid}", self._channel_message),
            ("POST", "/channels/{cid}/typing", self._typing),
            ("GET", "/guilds/{gid}", self._get_guild),
            ("GET", "/guilds/{gid}/channels", self._get_guild_channels),
            ("GET", "/guilds/{gid}/roles", self._get_roles),
            ("GET", "/guilds/{gid}/members/{uid}", self._get_member),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, API + path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for gw in list(self._gateways):
            await gw.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return self.base_url + API

    @property
    def gateway_url(self) -> str:
        """Value for ``DiscordWebSocket.DEFAULT_GATEWAY`` (and READY's resume_gateway_url)."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    # ----- stored objects ----------------------------------------------------------------------------------

    def snowflake(self) -> int:
        ms = max(0, int(self.clock.now() * 1000) - DISCORD_EPOCH_MS)
        return (ms << 22) | (next(self._counter) & 0x3FFFFF)

    def _iso(self) -> str:
        return datetime.fromtimestamp(self.clock.now(), UTC).isoformat()

    @staticmethod
    def _user(uid: int, name: str, *, bot: bool = False) -> dict[str, Any]:
        return {"id": str(uid), "username": name, "discriminator": "0", "global_name": name, "avatar": None,
                "bot": bot, "public_flags": 0, "flags": 0}

    @staticmethod
    def _role(rid: int, name: str, permissions: int, *, managed: bool = False) -> dict[str, Any]:
        return {"id": str(rid), "name": name, "color": 0, "colors": {"primary_color": 0}, "hoist": False,
                "icon": None, "unicode_emoji": None, "position": 0 if name == "@everyone" else 1,
                "permissions": str(permissions), "managed": managed, "mentionable": False, "flags": 0}

    def add_role(self, role_id: int, name: str, permissions: int = 0) -> None:
        self.roles[role_id] = self._role(role_id, name, permissions)

    def add_channel(self, channel_id: int, name: str) -> None:
        self.channels[channel_id] = {
            "id": str(channel_id), "type": 0, "guild_id": str(self.guild_id), "name": name,
            "position": len(self.channels), "permission_overwrites": [], "parent_id": None, "topic": None,
            "nsfw": False, "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}
        self.messages.setdefault(channel_id, [])

    def add_member(self, user_id: int, name: str, roles: Iterable[int] = ()) -> None:
        """A guild member; re-adding replaces their roles. Add before the bot connects to be in GUILD_CREATE."""
        self.users[user_id] = self._user(user_id, name)
        self.members[user_id] = [int(r) for r in roles]

    def _permissions(self, roles: Iterable[int]) -> int:
        perms = int(self.roles[self.guild_id]["permissions"])
        for r in roles:
            perms |= int(self.roles.get(r, {}).get("permissions", 0))
        return perms

    def dm_channel(self, user_id: int) -> int:
        """The bot's DM channel with a user (created on first use)."""
        if user_id not in self.dm_channels:
            if user_id not in self.users:
                self.add_member(user_id, f"user{user_id}")
            cid = self.snowflake()
            self.dm_channels[user_id] = {"id": str(cid), "type": 1, "recipients": [self.users[user_id]],
                                         "last_message_id": None, "flags": 0}
            self.messages[cid] = []
        return int(self.dm_channels[user_id]["id"])

    def _is_channel(self, channel_id: int) -> bool:
        return channel_id in self.channels or any(int(c["id"]) == channel_id for c in self.dm_channels.values())

    def _member(self, user_id: int, roles: Iterable[int] | None = None, *, with_user: bool = True) -> dict[str, Any]:
        if user_id not in self.users:
            self.add_member(user_id, f"user{user_id}")
        role_ids = list(self.members.get(user_id, []) if roles is None else roles)
        member = {"roles": [str(r) for r in role_ids], "joined_at": self._iso(), "flags": 0, "deaf": False,
                  "mute": False, "nick": None, "pending": False, "premium_since": None, "avatar": None,
                  "communication_disabled_until": None, "permissions": str(self._permissions(role_ids))}
        if with_user:
            member["user"] = self.users[user_id]
        return member

    def _guild(self) -> dict[str, Any]:
        return {
            "id": str(self.guild_id), "name": "vastops-test", "icon": None, "owner_id": str(next(iter(self.users))),
            "features": [], "roles": list(self.roles.values()), "emojis": [], "stickers": [],
            "channels": list(self.channels.values()), "threads": [], "voice_states": [], "presences": [],
            "members": [self._member(uid) for uid in self.members], "member_count": len(self.members),
            "large": False, "unavailable": False, "joined_at": self._iso(), "preferred_locale": "en-US",
            "verification_level": 0, "default_message_notifications": 1, "explicit_content_filter": 0,
            "mfa_level": 0, "nsfw_level": 0, "premium_tier": 0, "system_channel_flags": 0,
            "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": []}

    def message(self, message_id: int) -> StoredMessage:
        return self._by_id[message_id]

    def messages_in(self, channel_id: int, *, ephemeral: bool = True) -> list[StoredMessage]:
        """Live messages of a channel, oldest first (ephemeral ones too unless ``ephemeral=False``)."""
        return [m for m in self.messages.get(channel_id, []) if not m.deleted and (ephemeral or not m.ephemeral)]

    def commands(self, *, guild: bool = True) -> list[dict[str, Any]]:
        return self.guild_commands if guild else self.global_commands

    def inject_429(self, method: str, path_regex: str, *, times: int = 1, retry_after: float = 0.01,
                   is_global: bool = False) -> None:
        """Answer the next ``times`` matching calls (path relative to /api/v10, full match) with a 429."""
        self._rate_limits.append(_RateLimit(method.upper(), re.compile(path_regex), times, retry_after, is_global))

    # ----- waiting -----------------------------------------------------------------------------------------

    def _bump(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"fake Discord: timed out after {timeout}s waiting for {what}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_for_request(self, predicate: Callable[[RecordedRequest], bool], timeout: float = 5.0,
                               *, since: int = 0) -> RecordedRequest:
        """First recorded request (from index ``since``) matching ``predicate``."""
        found: list[RecordedRequest] = []

        def check() -> bool:
            found[:] = [r for r in self.requests[since:] if predicate(r)][:1]
            return bool(found)

        await self._wait_until(check, timeout, "a matching request")
        return found[0]

    async def wait_for_message(self, channel_id: int, predicate: Callable[[StoredMessage], bool] | None = None,
                               timeout: float = 5.0) -> StoredMessage:
        """First live message in the channel (as currently stored) matching ``predicate``."""
        found: list[StoredMessage] = []

        def check() -> bool:
            found[:] = [m for m in self.messages_in(channel_id) if predicate is None or predicate(m)][:1]
            return bool(found)

        await self._wait_until(check, timeout, f"a matching message in channel {channel_id}")
        return found[0]

    async def wait_for_gateway(self, timeout: float = 5.0) -> None:
        await self._wait_until(lambda: any(g.identified for g in self._gateways), timeout, "a bot to IDENTIFY")

    # ----- HTTP plumbing -----------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Awaitable[Any]]) -> web.StreamResponse:
        if not request.path.startswith(API):
            return await handler(request)
        path = request.path[len(API):]
        body, uploads = await self._read_body(request)
        request[BODY], request[UPLOADS] = body, uploads
        rec = RecordedRequest(request.method, path, body, {u.filename: u.data for u in uploads}, self.clock.now(),
                              dict(request.query))
        headers: dict[str, str] = {}
        try:
            limited = self._take_rate_limit(request.method, path)
            if limited is not None:
                # discord.py treats a 429 without a Via header as a Cloudflare ban and does not retry.
                headers = {"Via": "1.1 google", "Retry-After": str(limited.retry_after)}
                if limited.is_global:
                    headers["X-RateLimit-Global"] = "true"
                status, reply = 429, {"message": "You are being rate limited.", "retry_after": limited.retry_after,
                                      "global": limited.is_global, "code": 0}
            else:
                unmatched = getattr(request.match_info, "http_exception", None)
                if unmatched is not None:
                    raise unmatched  # an unmodelled route: 404/405, and listed in self.unhandled
                self._check_auth(request, path)
                status, reply = await handler(request)
        except DiscordError as exc:
            status, reply = exc.status, exc.body
        except web.HTTPException as exc:
            status, reply = exc.status, {"message": f"{exc.status}: {exc.reason}", "code": 0}
            self.unhandled.append(rec)
        rec.status, rec.response = status, reply
        self.requests.append(rec)
        self._bump()
        return _json_response(status, reply, headers)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[_Upload]]:
        if request.content_type == "multipart/form-data":
            payload: Any = None
            uploads: list[_Upload] = []
            reader = await request.multipart()
            async for part in reader:
                data = bytes(await part.read())  # type: ignore[union-attr]
                if part.name == "payload_json":
                    payload = json.loads(data)
                else:
                    uploads.append(_Upload(part.name or "", part.filename or "", data))  # type: ignore[union-attr]
            return payload, uploads
        raw = await request.read() if request.can_read_body else b""
        return (json.loads(raw) if raw else None), []

    def _take_rate_limit(self, method: str, path: str) -> _RateLimit | None:
        for rl in self._rate_limits:
            if rl.remaining > 0 and rl.method == method and rl.pattern.fullmatch(path):
                rl.remaining -= 1
                return rl
        return None

    def _check_auth(self, request: web.Request, path: str) -> None:
        if path.startswith(("/webhooks/", "/interactions/")):
            return  # authorised by the interaction token in the path
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bot ") or (self.bot_token is not None and auth != f"Bot {self.bot_token}"):
            raise DiscordError(401, 0, "401: Unauthorized")

    # ----- messages ----------------------------------------------------------------------------------------

    def _attachments(self, channel_id: int, body: Mapping[str, Any], uploads: list[_Upload],
                     old: StoredMessage | None) -> tuple[list[dict[str, Any]], dict[int, tuple[str, bytes]]]:
        by_index = {int(m.group()): u for u in uploads if (m := re.search(r"\d+", u.field))}
        kept = {int(a["id"]): a for a in (old.attachments if old else [])}
        blobs = dict(old.blobs) if old else {}
        listed = body.get("attachments")
        entries = [{"id": i} for i in by_index] if listed is None else list(listed)
        result = list(kept.values()) if (listed is None and old) else []
        used: set[int] = set()
        for entry in entries:
            key = int(entry["id"])
            if key in kept:
                result.append(kept[key])
            elif key in by_index:
                used.add(key)
                up = by_index[key]
                if len(up.data) > self.attachment_size_limit:
                    raise DiscordError(413, 40005, "Request entity too large")
                aid, name = self.snowflake(), entry.get("filename") or up.filename
                blobs[aid] = (name, up.data)
                result.append({"id": str(aid), "filename": name, "size": len(up.data),
                               "url": f"{self.base_url}/attachments/{channel_id}/{aid}/{name}",
                               "proxy_url": f"{self.base_url}/attachments/{channel_id}/{aid}/{name}",
                               "content_type": "text/plain" if name.endswith((".txt", ".log")) else None,
                               "description": entry.get("description")})
        return result, blobs

    @staticmethod
    def _normalise(payload: dict[str, Any]) -> None:
        for e in payload.get("embeds") or []:
            e.setdefault("type", "rich")
        # Discord numbers every component that has no id.
        used = {c["id"] for c in walk_components(payload.get("components") or []) if c.get("id")}
        ids = (i for i in itertools.count(1) if i not in used)
        for comp in walk_components(payload.get("components") or []):
            if not comp.get("id"):
                comp["id"] = next(ids)

    def _create(self, channel_id: int, body: Mapping[str, Any] | None, uploads: list[_Upload], *,
                inter: FakeInteraction | None = None, flags: int = 0, msg_type: int = 0) -> StoredMessage:
        if not self._is_channel(channel_id):
            raise DiscordError(404, 10003, "Unknown Channel")
        body = body or {}
        if errors := validate_message(body):
            raise invalid_form(errors)
        attachments, blobs = self._attachments(channel_id, body, uploads, None)
        loading = bool(flags & LOADING)
        if not loading and not (body.get("content") or body.get("embeds") or body.get("components")
                                or attachments or body.get("sticker_ids") or body.get("poll")):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        mid = self.snowflake()
        allowed = body.get("allowed_mentions")
        pings = Pings() if loading else mention_pings(body.get("content"), allowed)
        payload: dict[str, Any] = {
            "id": str(mid), "channel_id": str(channel_id), "type": msg_type,
            "content": body.get("content") or "", "author": self.bot_user, "timestamp": self._iso(),
            "edited_timestamp": None, "tts": bool(body.get("tts")), "mention_everyone": pings.everyone,
            "mentions": [self.users[u] for u in pings.users if u in self.users],
            "mention_roles": [str(r) for r in pings.roles], "attachments": attachments,
            "embeds": copy.deepcopy(body.get("embeds") or []),
            "components": copy.deepcopy(body.get("components") or []), "pinned": False, "flags": flags,
        }
        if channel_id in self.channels:
            payload["guild_id"] = str(self.guild_id)
        for key in ("nonce", "message_reference", "poll", "sticker_ids"):
            if key in body:
                payload[key] = body[key]
        if inter is not None:
            member = inter.payload.get("member") or {}
            user = member.get("user") or inter.payload.get("user")
            payload.update(webhook_id=str(self.app_id), application_id=str(self.app_id),
                           interaction_metadata={"id": str(inter.id), "type": inter.type, "user": user,
                                                 "authorizing_integration_owners": {"0": str(self.guild_id)}})
        self._normalise(payload)
        msg = StoredMessage(payload, blobs, allowed, pings, inter.id if inter else None)
        self.messages[channel_id].append(msg)
        self._by_id[mid] = msg
        self._bump()
        return msg

    def _edit(self, msg: StoredMessage, body: Mapping[str, Any] | None, uploads: list[_Upload]) -> None:
        body = body or {}
        new = copy.deepcopy(msg.payload)
        for key in ("content", "embeds", "components"):
            if key in body:
                new[key] = copy.deepcopy(body[key]) if body[key] is not None else ([] if key != "content" else "")
        flags = msg.flags & ~LOADING
        if "flags" in body and body["flags"] is not None:
            flags = (flags & ~SUPPRESS_EMBEDS) | (int(body["flags"]) & ~(EPHEMERAL | LOADING))
        new["flags"] = flags
        if errors := validate_message(new):
            raise invalid_form(errors)
        new["attachments"], blobs = self._attachments(msg.channel_id, body, uploads, msg)
        if not (new["content"] or new["embeds"] or new["components"] or new["attachments"]):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        if not msg.loading:
            new["edited_timestamp"] = self._iso()
        self._normalise(new)
        msg.history.append(msg.payload)
        msg.payload, msg.blobs = new, blobs
        self._bump()

    async def _announce(self, event: str, msg: StoredMessage) -> None:
        if not msg.ephemeral and not msg.loading:
            data = {k: msg.payload[k] for k in ("id", "channel_id", "guild_id") if k in msg.payload}
            intent = GUILD_MESSAGES_INTENT if "guild_id" in msg.payload else DM_MESSAGES_INTENT
            await self.dispatch(event, data if event == "MESSAGE_DELETE" else msg.payload, intent=intent,
                                required=False)

    # ----- REST handlers -----------------------------------------------------------------------------------

    async def _get_me(self, request: web.Request) -> Reply:
        return 200, {**self.bot_user, "verified": True, "mfa_enabled": False, "locale": "en-US"}

    async def _get_user(self, request: web.Request) -> Reply:
        user = self.users.get(int(request.match_info["uid"]))
        if user is None:
            raise DiscordError(404, 10013, "Unknown User")
        return 200, user

    async def _get_app(self, request: web.Request) -> Reply:
        # interactions_endpoint_url must stay null, or discord.py warns gateway interactions won't arrive.
        return 200, {"id": str(self.app_id), "name": self.bot_user["username"], "description": "", "icon": None,
                     "bot_public": False, "bot_require_code_grant": False, "owner": self.bot_user,
                     "verify_key": "0" * 64, "flags": 1 << 19, "team": None, "interactions_endpoint_url": None,
                     "guild_id": str(self.guild_id), "tags": [], "redirect_uris": []}

    async def _get_gateway(self, request: web.Request) -> Reply:
        return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}}

    def _check_app(self, request: web.Request) -> None:
        if int(request.match_info["app"]) != self.app_id:
            raise DiscordError(404, 10002, "Unknown Application")
        if "gid" in request.match_info and int(request.match_info["gid"]) != self.guild_id:
            raise DiscordError(404, 10004, "Unknown Guild")

    async def _get_commands(self, request: web.Request) -> Reply:
        self._check_app(request)
        return 200, self.commands(guild="gid" in request.match_info)

    async def _put_commands(self, request: web.Request) -> Reply:
        self._check_app(request)
        body = request[BODY] or []
        if errors := validate_commands(body):
            raise invalid_form(errors)
        guild_id = self.guild_id if "gid" in request.match_info else None
        version = str(self.snowflake())
        stored = []
        for cmd in body:
            key = (guild_id, int(cmd.get("type", 1)), cmd["name"])
            # Discord keeps a command's id across overwrites as long as its name and type stay the same.
            cid = self._command_ids.setdefault(key, self.snowflake())
            out = {"type": 1, "default_member_permissions": None, "nsfw": False, "options": [], **cmd,
                   "id": str(cid), "application_id": str(self.app_id), "version": version}
            if guild_id is not None:
                out["guild_id"] = str(guild_id)
            stored.append(out)
        if guild_id is None:
            self.global_commands = stored
        else:
            self.guild_commands = stored
        return 200, stored

    def _interaction_by_token(self, request: web.Request) -> FakeInteraction:
        inter = self._by_token.get(request.match_info["token"])
        if inter is None or int(request.match_info["app"]) != self.app_id:
            raise DiscordError(404, 10015, "Unknown Webhook")
        if self.clock.now() - inter.created_at > self.token_lifetime:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        return inter

    async def _callback(self, request: web.Request) -> Reply:
        inter = self.interactions.get(int(request.match_info["iid"]))
        if inter is None or inter.token != request.match_info["token"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        try:
            return await self._accept_callback(inter, request)
        except DiscordError as exc:
            inter.rejected.append(RecordedRequest("POST", request.path[len(API):], request[BODY], {},
                                                  self.clock.now(), status=exc.status, response=exc.body))
            raise

    async def _accept_callback(self, inter: FakeInteraction, request: web.Request) -> Reply:
        if inter.response_body is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if self.clock.now() - inter.created_at > self.interaction_ack_deadline:
            raise DiscordError(404, 10062, "Unknown interaction")
        body = request[BODY] or {}
        rtype, data = int(body.get("type", 0)), body.get("data") or {}
        if rtype not in ALLOWED_RESPONSES.get(inter.type, set()):
            raise invalid_form({"type": [{"code": "INTERACTION_RESPONSE_TYPE_INVALID",
                                          "message": f"Response type {rtype} is not valid for this interaction"}]})
        msg: StoredMessage | None = None
        ephemeral = bool(int(data.get("flags") or 0) & EPHEMERAL)
        if rtype == 4:
            flags = int(data.get("flags") or 0) & SETTABLE_FLAGS
            msg = self._create(inter.channel_id or 0, data, request[UPLOADS], inter=inter, flags=flags,
                               msg_type=20 if inter.type == 2 else 0)
        elif rtype == 5:
            msg = self._create(inter.channel_id or 0, {}, [], inter=inter,
                               flags=LOADING | (EPHEMERAL if ephemeral else 0), msg_type=20 if inter.type == 2 else 0)
        elif rtype in (6, 7):
            msg = self._by_id.get(inter.message_id or 0)
            if msg is None:
                raise DiscordError(404, 10008, "Unknown Message")
            ephemeral = msg.ephemeral
            if rtype == 7:
                self._edit(msg, data, request[UPLOADS])
        elif rtype == 8:
            if errors := validate_choices(data):
                raise invalid_form({f"data.{k}": v for k, v in errors.items()})
            inter.choices = data.get("choices") or []
        elif rtype == 9:
            if errors := validate_modal(data):
                raise invalid_form({f"data.{k}": v for k, v in errors.items()})
            inter.modal = data
        inter.original = msg
        inter.response_body = {"type": rtype, "data": data}
        inter.responded_perf = time.perf_counter()
        self._bump()
        if msg is not None and rtype in (4, 7):
            await self._announce("MESSAGE_CREATE" if rtype == 4 else "MESSAGE_UPDATE", msg)
        if request.query.get("with_response") not in ("1", "true", "True"):
            return 204, None
        resource: dict[str, Any] = {"type": rtype}
        if msg is not None and rtype in (4, 5, 7):
            resource["message"] = msg.payload
        info: dict[str, Any] = {"id": str(inter.id), "type": inter.type, "activity_instance_id": None,
                                "response_message_loading": rtype == 5, "response_message_ephemeral": ephemeral}
        if msg is not None:
            info["response_message_id"] = str(msg.id)
        return 200, {"interaction": info, "resource": resource}

    async def _followup(self, request: web.Request) -> Reply:
        inter = self._interaction_by_token(request)
        if inter.response_body is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        body = request[BODY] or {}
        original = inter.original
        if original is not None and original.loading and inter.response_type == 5:
            # The first followup after a "thinking" defer replaces the loading message (and can ping).
            self._edit(original, body, request[UPLOADS])
            original.allowed_mentions = body.get("allowed_mentions")
            original.pings = mention_pings(body.get("content"), original.allowed_mentions)
            msg = original
            await self._announce("MESSAGE_CREATE", msg)
        else:
            flags = int(body.get("flags") or 0) & SETTABLE_FLAGS
            msg = self._create(inter.channel_id or 0, body, request[UPLOADS], inter=inter, flags=flags)
            await self._announce("MESSAGE_CREATE", msg)
        inter.followups.append(msg)
        self._bump()
        return (200, msg.payload) if request.query.get("wait") in ("1", "true", "True") else (204, None)

    async def _webhook_message(self, request: web.Request) -> Reply:
        inter = self._interaction_by_token(request)
        mid = request.match_info["mid"]
        msg = inter.original if mid == "@original" else self._by_id.get(int(mid))
        own = msg is not None and (msg is inter.original or msg in inter.followups)
        if msg is None or msg.deleted or not own:
            raise DiscordError(404, 10008, "Unknown Message")
        if request.method == "PATCH":
            self._edit(msg, request[BODY], request[UPLOADS])
            await self._announce("MESSAGE_UPDATE", msg)
        elif request.method == "DELETE":
            msg.deleted = True
            self._bump()
            await self._announce("MESSAGE_DELETE", msg)
            return 204, None
        return 200, msg.payload

    def _channel(self, request: web.Request) -> int:
        cid = int(request.match_info["cid"])
        if not self._is_channel(cid):
            raise DiscordError(404, 10003, "Unknown Channel")
        return cid

    async def _get_channel(self, request: web.Request) -> Reply:
        cid = self._channel(request)
        return 200, self.channels.get(cid) or next(c for c in self.dm_channels.values() if int(c["id"]) == cid)

    async def _create_dm(self, request: web.Request) -> Reply:
        uid = int((request[BODY] or {}).get("recipient_id", 0))
        if uid not in self.users:
            raise DiscordError(404, 10013, "Unknown User")
        self.dm_channel(uid)
        return 200, self.dm_channels[uid]

    async def _history(self, request: web.Request) -> Reply:
        cid = self._channel(request)
        limit = int(request.query.get("limit", 50))
        msgs = [m for m in self.messages_in(cid, ephemeral=False)]
        if "before" in request.query:
            msgs = [m for m in msgs if m.id < int(request.query["before"])]
        if "after" in request.query:
            msgs = [m for m in msgs if m.id > int(request.query["after"])]
        return 200, [m.payload for m in reversed(msgs)][:limit]

    async def _post_message(self, request: web.Request) -> Reply:
        body = dict(request[BODY] or {})
        body["flags"] = int(body.get("flags") or 0) & ~(EPHEMERAL | LOADING)  # not settable on channel messages
        msg = self._create(self._channel(request), body, request[UPLOADS], flags=body["flags"])
        await self._announce("MESSAGE_CREATE", msg)
        return 200, msg.payload

    async def _channel_message(self, request: web.Request) -> Reply:
        cid = self._channel(request)
        msg = self._by_id.get(int(request.match_info["mid"]))
        if msg is None or msg.deleted or msg.ephemeral or msg.channel_id != cid:
            raise DiscordError(404, 10008, "Unknown Message")
        if request.method == "PATCH":
            if msg.payload["author"]["id"] != self.bot_user["id"]:
                raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
            self._edit(msg, request[BODY], request[UPLOADS])
            await self._announce("MESSAGE_UPDATE", msg)
        elif request.method == "DELETE":
            msg.deleted = True
            self._bump()
            await self._announce("MESSAGE_DELETE", msg)
            return 204, None
        return 200, msg.payload

    async def _typing(self, request: web.Request) -> Reply:
        self._channel(request)
        return 204, None

    def _check_guild(self, request: web.Request) -> None:
        if int(request.match_info["gid"]) != self.guild_id:
            raise DiscordError(404, 10004, "Unknown Guild")

    async def _get_guild(self, request: web.Request) -> Reply:
        self._check_guild(request)
        guild = self._guild()
        for key in ("channels", "members", "threads", "voice_states", "presences"):
            guild.pop(key)
        return 200, guild

    async def _get_guild_channels(self, request: web.Request) -> Reply:
        self._check_guild(request)
        return 200, list(self.channels.values())

    async def _get_roles(self, request: web.Request) -> Reply:
        self._check_guild(request)
        return 200, list(self.roles.values())

    async def _get_member(self, request: web.Request) -> Reply:
        self._check_guild(request)
        uid = int(request.match_info["uid"])
        if uid not in self.members:
            raise DiscordError(404, 10007, "Unknown Member")
        member = self._member(uid)
        member.pop("permissions")
        return 200, member

    async def _attachment(self, request: web.Request) -> web.StreamResponse:
        msg_blob = next((b for m in self._by_id.values() for aid, b in m.blobs.items()
                         if aid == int(request.match_info["aid"])), None)
        if msg_blob is None:
            raise web.HTTPNotFound()
        return web.Response(body=msg_blob[1], content_type="application/octet-stream")

    # ----- gateway -----------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.gateway_connects.append(dict(request.query))
        gw = _Gateway(ws)
        self._gateways.add(gw)
        try:
            # Text frames only: discord.py decompresses binary frames and parses text frames as plain JSON.
            await gw.send(10, {"heartbeat_interval": 41250, "_trace": ["fake-discord"]})
            async for frame in ws:
                if frame.type is not WSMsgType.TEXT:
                    continue
                await self._on_gateway_op(gw, json.loads(frame.data))
        finally:
            self._gateways.discard(gw)
            if gw.session_id:
                self._sessions[gw.session_id] = gw.seq
            self._bump()
        return ws

    async def _on_gateway_op(self, gw: _Gateway, msg: dict[str, Any]) -> None:
        op, d = msg.get("op"), msg.get("d")
        if op == 1:
            await gw.send(11, None)
        elif op == 2:
            self.gateway_events.append("IDENTIFY")
            gw.session_id, gw.intents = secrets.token_hex(16), int(d.get("intents") or 0)
            await gw.send(0, {
                "v": 10, "user": {**self.bot_user, "verified": True, "mfa_enabled": False},
                "guilds": [{"id": str(self.guild_id), "unavailable": True}], "session_id": gw.session_id,
                "resume_gateway_url": self.gateway_url, "session_type": "normal", "private_channels": [],
                "relationships": [], "presences": [], "geo_ordered_rtc_regions": [], "_trace": ["fake-discord"],
                "application": {"id": str(self.app_id), "flags": 1 << 19}}, "READY")
            await gw.send(0, self._guild(), "GUILD_CREATE")
            gw.identified = True
            self._bump()
        elif op == 6:
            session = d.get("session_id")
            if session not in self._sessions:
                self.gateway_events.append("RESUME-REFUSED")
                await gw.send(9, False)
                return
            self.gateway_events.append("RESUME")
            gw.session_id, gw.seq, gw.identified = session, self._sessions[session], True
            await gw.send(0, {"_trace": ["fake-discord"]}, "RESUMED")
            self._bump()
        elif op == 8:
            self.gateway_events.append("REQUEST_MEMBERS")
            members = [self._member(u) for u in self.members]
            for m in members:
                m.pop("permissions")
            await gw.send(0, {"guild_id": str(self.guild_id), "members": members, "chunk_index": 0,
                              "chunk_count": 1, "not_found": [], "nonce": d.get("nonce")}, "GUILD_MEMBERS_CHUNK")

    async def dispatch(self, event: str, data: Any, *, intent: int = 0, required: bool = True) -> int:
        """Send a DISPATCH to every identified connection (having ``intent``, if given); returns how many got it."""
        sent = 0
        for gw in list(self._gateways):
            if gw.identified and (not intent or gw.intents & intent):
                try:
                    await gw.send(0, data, event)
                    sent += 1
                except (ConnectionError, RuntimeError):
                    self._gateways.discard(gw)
        if required and not sent:
            raise RuntimeError(f"fake Discord: no bot is connected to receive {event}")
        return sent

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close every gateway connection with ``code``; discord.py then resumes on resume_gateway_url."""
        for gw in list(self._gateways):
            gw.identified = False  # so wait_for_gateway() waits for the reconnect, not this socket
            await gw.ws.close(code=code)

    # ----- injected interactions ---------------------------------------------------------------------------

    def _new_interaction(self, itype: int, data: dict[str, Any], *, user_id: int, roles: Iterable[int] | None,
                         channel_id: int | None, guild: bool, message: StoredMessage | None = None,
                         locale: str = "en-US") -> FakeInteraction:
        iid = self.snowflake()
        cid = channel_id if channel_id is not None else (message.channel_id if message else next(iter(self.channels)))
        if not guild:
            cid = self.dm_channel(user_id)
        payload: dict[str, Any] = {
            "id": str(iid), "application_id": str(self.app_id), "type": itype, "data": data,
            "token": f"itok-{iid}-{secrets.token_urlsafe(24)}", "version": 1, "locale": locale,
            "app_permissions": str(BOT_PERMISSIONS), "entitlements": [], "entitlement_sku_ids": [],
            # Required since discord.py 2.5 (KeyError without it).
            "attachment_size_limit": self.attachment_size_limit,
        }
        if guild:
            payload.update(guild_id=str(self.guild_id), guild_locale="en-US", context=0,
                           guild={"id": str(self.guild_id), "locale": "en-US", "features": []},
                           channel_id=str(cid), channel=self.channels[cid], member=self._member(user_id, roles),
                           authorizing_integration_owners={"0": str(self.guild_id)})
        else:
            payload.update(context=1, user=self.users[user_id], channel_id=str(cid),
                           channel=self.dm_channels[user_id], authorizing_integration_owners={"0": "0"})
        if message is not None:
            payload["message"] = message.payload
        inter = FakeInteraction(iid, payload["token"], itype, payload, self.clock.now(), cid,
                                message.id if message else None, self._wait_until)
        self.interactions[iid] = inter
        self._by_token[inter.token] = inter
        return inter

    def _find_command(self, path: list[str]) -> tuple[dict[str, Any], bool]:
        for cmd in self.guild_commands:
            if cmd["name"] == path[0] and cmd.get("type", 1) == 1:
                return cmd, True
        for cmd in self.global_commands:
            if cmd["name"] == path[0] and cmd.get("type", 1) == 1:
                return cmd, False
        known = [c["name"] for c in self.guild_commands + self.global_commands]
        raise LookupError(f"/{path[0]} was never synced to the fake (synced: {known})")

    def _options(self, defs: list[dict[str, Any]], values: Mapping[str, Any], focused: str | None,
                 resolved: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        by_name = {d["name"]: d for d in defs}
        out = []
        for name, value in values.items():
            if name not in by_name:
                raise KeyError(f"option {name!r} is not in the synced command (has {sorted(by_name)})")
            d, is_focused = by_name[name], name == focused
            kind = d["type"]
            if kind in (6, 7, 8, 9):
                oid = int(value)
                if kind == 7:
                    resolved.setdefault("channels", {})[str(oid)] = {**self.channels[oid], "permissions": "0"}
                elif kind == 8 or (kind == 9 and oid in self.roles):
                    resolved.setdefault("roles", {})[str(oid)] = self.roles[oid]
                else:
                    resolved.setdefault("users", {})[str(oid)] = self._member(oid)["user"]
                    resolved.setdefault("members", {})[str(oid)] = self._member(oid, with_user=False)
                value = str(oid)
            elif not is_focused:
                # The Discord client enforces choices and ranges before the bot ever sees the value.
                choices = [c["value"] for c in d.get("choices") or []]
                if choices and value not in choices:
                    raise ValueError(f"option {name!r}: {value!r} is not one of the choices {choices}")
                if ("min_value" in d and value < d["min_value"]) or ("max_value" in d and value > d["max_value"]):
                    raise ValueError(f"option {name!r}: {value!r} is out of range")
            opt: dict[str, Any] = {"name": name, "type": kind, "value": value}
            if is_focused:
                opt["focused"] = True
            out.append(opt)
        if focused is None:
            missing = [d["name"] for d in defs if d.get("required") and d["name"] not in values]
            if missing:
                raise ValueError(f"required option(s) missing: {missing}")
        return out

    def _command_data(self, name: str, options: Mapping[str, Any], focused: str | None) -> dict[str, Any]:
        path = name.split()
        cmd, is_guild = self._find_command(path)
        resolved: dict[str, dict[str, Any]] = {}
        defs: list[dict[str, Any]] = cmd.get("options") or []
        chain: list[dict[str, Any]] = []
        for sub in path[1:]:
            node = next((o for o in defs if o["name"] == sub and o["type"] in (1, 2)), None)
            if node is None:
                raise LookupError(f"/{name}: no subcommand {sub!r}")
            chain.append({"name": sub, "type": node["type"]})
            defs = node.get("options") or []
        leaf = self._options(defs, options, focused, resolved)
        for link in reversed(chain):
            link["options"] = leaf
            leaf = [link]
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 1, "options": leaf}
        if is_guild:
            data["guild_id"] = str(self.guild_id)
        if resolved:
            data["resolved"] = resolved
        return data

    async def slash(self, name: str, options: Mapping[str, Any] | None = None, *, user_id: int,
                    roles: Iterable[int] | None = None, channel_id: int | None = None, guild: bool = True,
                    locale: str = "en-US") -> FakeInteraction:
        """Dispatch a slash command (``"group sub"`` for subcommands); ``roles=None`` uses the member's stored roles."""
        data = self._command_data(name, options or {}, None)
        inter = self._new_interaction(2, data, user_id=user_id, roles=roles, channel_id=channel_id, guild=guild,
                                      locale=locale)
        await self.dispatch("INTERACTION_CREATE", inter.payload)
        return inter

    async def autocomplete(self, name: str, options: Mapping[str, Any], focused: str, *, user_id: int,
                           roles: Iterable[int] | None = None, channel_id: int | None = None,
                           timeout: float = 5.0) -> list[dict[str, Any]]:
        """Dispatch an autocomplete (type 4) with ``focused`` as the option being typed; returns the bot's choices."""
        data = self._command_data(name, options, focused)
        inter = self._new_interaction(4, data, user_id=user_id, roles=roles, channel_id=channel_id, guild=True)
        await self.dispatch("INTERACTION_CREATE", inter.payload)
        await inter.response(timeout)
        return inter.choices or []

    async def click(self, message_id: int, custom_id: str, *, user_id: int, roles: Iterable[int] | None = None,
                    values: list[str] | None = None) -> FakeInteraction:
        """Dispatch a component interaction on a stored message; the component must really be on it."""
        msg = self._by_id.get(message_id)
        if msg is None or msg.deleted:
            raise LookupError(f"no live message {message_id}")
        comp = next((c for c in walk_components(msg.components) if c.get("custom_id") == custom_id), None)
        if comp is None:
            raise LookupError(f"message {message_id} has no component {custom_id!r} (has {msg.custom_ids()})")
        if comp.get("disabled"):
            raise LookupError(f"component {custom_id!r} is disabled; the Discord client cannot click it")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": comp["type"], "id": comp.get("id")}
        if comp["type"] in (3, 5, 6, 7, 8):
            data["values"] = values or []
        inter = self._new_interaction(3, data, user_id=user_id, roles=roles, channel_id=msg.channel_id,
                                      guild=True, message=msg)
        await self.dispatch("INTERACTION_CREATE", inter.payload)
        return inter

    async def submit_modal(self, custom_id: str, values: Mapping[str, str], *, user_id: int,
                           roles: Iterable[int] | None = None, message_id: int | None = None,
                           channel_id: int | None = None) -> FakeInteraction:
        """Dispatch a modal submit (type 5) with text inputs ``{custom_id: value}``."""
        rows = [{"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in values.items()]
        msg = self._by_id.get(message_id) if message_id else None
        inter = self._new_interaction(5, {"custom_id": custom_id, "components": rows}, user_id=user_id,
                                      roles=roles, channel_id=channel_id, guild=True, message=msg)
        await self.dispatch("INTERACTION_CREATE", inter.payload)
        return inter
