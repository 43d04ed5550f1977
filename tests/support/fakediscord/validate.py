"""Discord's request-body limits, checked the way the API does: 400, code 50035 "Invalid Form Body"."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_EMBEDS = 1 << 2
COMPONENTS_V2 = 1 << 15
SELECT_TYPES = frozenset({3, 5, 6, 7, 8})
# Name rule from the API docs (CHAT_INPUT names must also be lowercase).
COMMAND_NAME = re.compile(r"^[-_'\w\u0900-\u097F\u0E00-\u0E7F]{1,32}$")

Errors = dict[str, list[dict[str, str]]]


class _Collector:
    def __init__(self) -> None:
        self.errors: Errors = {}

    def add(self, path: str, code: str, message: str) -> None:
        self.errors.setdefault(path, []).append({"code": code, "message": message})

    def max_len(self, path: str, value: Any, limit: int) -> None:
        if isinstance(value, str | list) and len(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def between(self, path: str, value: Any, low: int, high: int) -> None:
        if not isinstance(value, str) or not low <= len(value) <= high:
            self.add(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")

    def required(self, path: str, value: Any) -> bool:
        if value is None or value == "":
            self.add(path, "BASE_TYPE_REQUIRED", "This field is required")
            return False
        return True


def nest_errors(errors: Errors) -> dict[str, Any]:
    """Turn ``{"embeds.0.title": [...]}`` into Discord's nested ``errors`` object."""
    root: dict[str, Any] = {}
    for path, errs in errors.items():
        node = root
        for part in path.split("."):
            node = node.setdefault(part, {})
        node["_errors"] = errs
    return root


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _embed(c: _Collector, path: str, embed: Mapping[str, Any]) -> int:
    """Check one embed and return the characters that count toward the 6000 total."""
    c.max_len(f"{path}.title", embed.get("title"), 256)
    c.max_len(f"{path}.description", embed.get("description"), 4096)
    fields = embed.get("fields") or []
    c.max_len(f"{path}.fields", fields, 25)
    total = len(_text(embed.get("title"))) + len(_text(embed.get("description")))
    for i, f in enumerate(fields):
        fp = f"{path}.fields.{i}"
        if c.required(f"{fp}.name", f.get("name")):
            c.max_len(f"{fp}.name", f["name"], 256)
        if c.required(f"{fp}.value", f.get("value")):
            c.max_len(f"{fp}.value", f["value"], 1024)
        total += len(_text(f.get("name"))) + len(_text(f.get("value")))
    footer = embed.get("footer") or {}
    c.max_len(f"{path}.footer.text", footer.get("text"), 2048)
    author = embed.get("author") or {}
    c.max_len(f"{path}.author.name", author.get("name"), 256)
    return total + len(_text(footer.get("text"))) + len(_text(author.get("name")))


def _interactive(c: _Collector, path: str, comp: Mapping[str, Any], seen: set[str]) -> None:
    kind = comp.get("type")
    custom_id = comp.get("custom_id")
    if kind == 2:
        c.max_len(f"{path}.label", comp.get("label"), 80)
        if not comp.get("label") and not comp.get("emoji"):
            c.add(f"{path}.label", "BUTTON_COMPONENT_LABEL_OR_EMOJI_REQUIRED", "A label or an emoji is required")
        if comp.get("style") == 5:
            c.required(f"{path}.url", comp.get("url"))
            if custom_id is not None:
                c.add(f"{path}.custom_id", "BUTTON_COMPONENT_CUSTOM_ID_NOT_ALLOWED", "A link button has no custom id")
            return
        if comp.get("style") == 6:
            c.required(f"{path}.sku_id", comp.get("sku_id"))
            return
    elif kind in SELECT_TYPES:
        c.max_len(f"{path}.placeholder", comp.get("placeholder"), 150)
        if kind == 3:
            options = comp.get("options") or []
            if not 1 <= len(options) <= 25:
                c.add(f"{path}.options", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 25 in length.")
            for i, opt in enumerate(options):
                c.between(f"{path}.options.{i}.label", opt.get("label"), 1, 100)
                c.between(f"{path}.options.{i}.value", opt.get("value"), 1, 100)
                c.max_len(f"{path}.options.{i}.description", opt.get("description"), 100)
    elif kind == 4:
        c.max_len(f"{path}.label", comp.get("label"), 45)
        c.max_len(f"{path}.value", comp.get("value"), 4000)
        c.max_len(f"{path}.placeholder", comp.get("placeholder"), 100)
    else:
        c.add(f"{path}.type", "UNION_TYPE_CHOICES", f"Component type {kind!r} is not allowed here")
        return
    if c.required(f"{path}.custom_id", custom_id):
        c.between(f"{path}.custom_id", custom_id, 1, 100)
        if custom_id in seen:
            c.add(f"{path}.custom_id", "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated")
        seen.add(custom_id)


def _action_row(c: _Collector, path: str, row: Mapping[str, Any], seen: set[str]) -> None:
    children = row.get("components") or []
    if not 1 <= len(children) <= 5:
        c.add(f"{path}.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
    if len(children) > 1 and any(ch.get("type") in SELECT_TYPES for ch in children):
        c.add(f"{path}.components", "COMPONENT_LAYOUT_WIDTH_EXCEEDED", "The component exceeds the maximum width")
    for j, child in enumerate(children):
        _interactive(c, f"{path}.components.{j}", child, seen)


def _v2_tree(c: _Collector, path: str, comps: list[Mapping[str, Any]], seen: set[str], count: list[int]) -> None:
    for i, comp in enumerate(comps):
        p = f"{path}.{i}"
        count[0] += 1
        kind = comp.get("type")
        if kind == 1:
            count[0] += len(comp.get("components") or [])
            _action_row(c, p, comp, seen)
        elif kind in (9, 17):  # section, container
            _v2_tree(c, f"{p}.components", comp.get("components") or [], seen, count)
            if comp.get("accessory"):
                _v2_tree(c, f"{p}.accessory", [comp["accessory"]], seen, count)
        elif kind == 10:
            count[1] += len(_text(comp.get("content")))
        elif kind == 2 or kind in SELECT_TYPES:
            _interactive(c, p, comp, seen)


def validate_message(body: Mapping[str, Any]) -> Errors:
    """Errors for a message create/edit body (or interaction callback ``data``); empty when valid."""
    c = _Collector()
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        c.add("content", "BASE_TYPE_STRING", "Must be a string.")
    c.max_len("content", content, 2000)
    embeds = body.get("embeds") or []
    c.max_len("embeds", embeds, 10)
    total = sum(_embed(c, f"embeds.{i}", e) for i, e in enumerate(embeds))
    if total > 6000:
        c.add("embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")
    comps = body.get("components") or []
    seen: set[str] = set()
    if int(body.get("flags") or 0) & COMPONENTS_V2:
        if content or embeds:
            c.add("content", "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2",
                  "The 'content' and 'embeds' fields cannot be used when using MessageFlags.IS_COMPONENTS_V2")
        count = [0, 0]
        _v2_tree(c, "components", comps, seen, count)
        if count[0] > 40:
            c.add("components", "BASE_TYPE_MAX_LENGTH", "Must be 40 or fewer in length.")
        if count[1] > 4000:
            c.add("components", "MAX_TEXT_DISPLAY_SIZE_EXCEEDED", "Text display content exceeds 4000 characters")
    else:
        c.max_len("components", comps, 5)
        for i, row in enumerate(comps):
            if row.get("type") != 1:
                c.add(f"components.{i}.type", "UNION_TYPE_CHOICES", 'Value of field "type" must be one of (1,).')
                continue
            _action_row(c, f"components.{i}", row, seen)
    allowed = body.get("allowed_mentions")
    if isinstance(allowed, Mapping):
        parse = allowed.get("parse") or []
        for kind in ("users", "roles"):
            if kind in parse and allowed.get(kind):
                c.add(f"allowed_mentions.{kind}", "ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                      f"parse:[\"{kind}\"] and {kind}: [ids...] are mutually exclusive.")
    return c.errors


def validate_modal(data: Mapping[str, Any]) -> Errors:
    c = _Collector()
    c.between("title", data.get("title"), 1, 45)
    c.between("custom_id", data.get("custom_id"), 1, 100)
    rows = data.get("components") or []
    if not 1 <= len(rows) <= 5:
        c.add("components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
    return c.errors


def validate_choices(data: Mapping[str, Any]) -> Errors:
    c = _Collector()
    choices = data.get("choices") or []
    c.max_len("choices", choices, 25)
    for i, ch in enumerate(choices):
        c.between(f"choices.{i}.name", ch.get("name"), 1, 100)
        c.max_len(f"choices.{i}.value", ch.get("value"), 100)
    return c.errors


def _command_chars(node: Mapping[str, Any]) -> int:
    n = len(_text(node.get("name"))) + len(_text(node.get("description")))
    n += sum(len(_text(ch.get("name"))) + len(str(ch.get("value", ""))) for ch in node.get("choices") or [])
    return n + sum(_command_chars(o) for o in node.get("options") or [])


def _option(c: _Collector, path: str, opt: Mapping[str, Any]) -> None:
    name = opt.get("name")
    if not isinstance(name, str) or not COMMAND_NAME.match(name) or name != name.lower():
        c.add(f"{path}.name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
    c.between(f"{path}.description", opt.get("description"), 1, 100)
    choices = opt.get("choices") or []
    c.max_len(f"{path}.choices", choices, 25)
    if choices and opt.get("autocomplete"):
        c.add(f"{path}.autocomplete", "APPLICATION_COMMAND_AUTOCOMPLETE_CHOICES", "Autocomplete excludes choices")
    for i, ch in enumerate(choices):
        c.between(f"{path}.choices.{i}.name", ch.get("name"), 1, 100)
        c.max_len(f"{path}.choices.{i}.value", ch.get("value"), 100)
    _options(c, f"{path}.options", opt.get("options") or [])


def _options(c: _Collector, path: str, options: list[Mapping[str, Any]]) -> None:
    c.max_len(path, options, 25)
    optional_seen = False
    for i, opt in enumerate(options):
        if opt.get("type") not in (1, 2):
            if opt.get("required") and optional_seen:
                c.add(f"{path}.{i}.required", "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                      "Required options must be placed before non-required options")
            optional_seen = optional_seen or not opt.get("required")
        _option(c, f"{path}.{i}", opt)


def validate_commands(commands: list[Mapping[str, Any]]) -> Errors:
    """Errors for a bulk-overwrite body (``PUT .../commands``); empty when valid."""
    c = _Collector()
    seen: set[tuple[int, str]] = set()
    if sum(1 for cmd in commands if cmd.get("type", 1) == 1) > 100:
        c.add("_root", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
    for i, cmd in enumerate(commands):
        kind, name = cmd.get("type", 1), cmd.get("name")
        if (kind, name) in seen:
            c.add(f"{i}.name", "APPLICATION_COMMANDS_DUPLICATE_NAME", f"Command names must be unique: {name}")
        seen.add((kind, str(name)))
        if kind == 1:
            _option(c, str(i), cmd)
        else:
            c.between(f"{i}.name", name, 1, 32)
            if cmd.get("description"):
                c.add(f"{i}.description", "APPLICATION_COMMAND_DESCRIPTION_NOT_ALLOWED",
                      "Context menu commands cannot have a description")
        if _command_chars(cmd) > 8000:
            c.add(str(i), "APPLICATION_COMMAND_TOO_LARGE", "Command exceeds maximum size (8000)")
    return c.errors


@dataclass
class Pings:
    """Who a message would notify, given its content and ``allowed_mentions`` (``None`` = Discord's default)."""

    everyone: bool = False
    roles: list[int] = field(default_factory=list)
    users: list[int] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return self.everyone or bool(self.roles) or bool(self.users)


def mention_pings(content: str | None, allowed: Mapping[str, Any] | None) -> Pings:
    text = content or ""
    # Without allowed_mentions Discord parses every mention type.
    parse = {"everyone", "roles", "users"} if allowed is None else set(allowed.get("parse") or [])
    role_ids = {int(r) for r in (allowed or {}).get("roles") or []}
    user_ids = {int(u) for u in (allowed or {}).get("users") or []}
    everyone = "everyone" in parse and bool(re.search(r"@(everyone|here)", text))
    roles = [int(r) for r in re.findall(r"<@&(\d+)>", text) if "roles" in parse or int(r) in role_ids]
    users = [int(u) for u in re.findall(r"<@!?(\d+)>", text) if "users" in parse or int(u) in user_ids]
    return Pings(everyone=everyone, roles=roles, users=users)
