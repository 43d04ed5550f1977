"""The one helper for everything the bot posts to Discord: redaction, escaping, code blocks and size limits.

Every string that reaches Discord goes through a ``Render``: untrusted text (log lines, host
names, user input) is redacted *then* escaped (escaping first would break the secret patterns),
code is put in blocks whose backticks cannot close them early, and everything is cut to
Discord's limits. Output that does not fit a message becomes a file attachment instead of being
silently lost. Nothing here talks to Discord; it only builds what the cogs and the watcher send.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import discord

# Discord's hard limits (400 / 50035 "Invalid Form Body" beyond them).
CONTENT_LIMIT = 2000
EMBED_TITLE_LIMIT = 256
EMBED_DESCRIPTION_LIMIT = 4096
EMBED_FIELD_NAME_LIMIT = 256
EMBED_FIELD_VALUE_LIMIT = 1024
EMBED_FOOTER_LIMIT = 2048
EMBED_AUTHOR_LIMIT = 256
EMBED_MAX_FIELDS = 25
EMBED_TOTAL_LIMIT = 6000  # across all embeds of one message
MAX_EMBEDS = 10
BUTTON_LABEL_LIMIT = 80
SELECT_OPTION_LIMIT = 100  # label, value and description of one select option
SELECT_MAX_OPTIONS = 25
CUSTOM_ID_LIMIT = 100
CHOICE_NAME_LIMIT = 100  # autocomplete / choice name and value
# Files above this are cut to their tail: Discord's smallest upload limit (no boosts) is 10 MiB.
FILE_LIMIT = 8 * 1024 * 1024

ELLIPSIS = "…"
ZWSP = "\u200b"

_BACKTICK_RUN = re.compile(r"`(?=`)")
_MENTION = re.compile(r"@(everyone|here|[!&]?[0-9]{15,21})")
_ROLE_OR_USER = re.compile(r"<(@[!&]?|#)([0-9]{15,21})>")


class Redacting(Protocol):
    """What ``Render`` needs from ``bot.watch.redact.Redactor``."""

    def redact(self, text: str) -> str: ...


class _NoRedaction:
    def redact(self, text: str) -> str:
        return text


# ---------------------------------------------------------------- plain text helpers


def truncate(text: str, limit: int, *, marker: str = ELLIPSIS, keep: Literal["head", "tail"] = "head") -> str:
    """``text`` if it fits in ``limit`` characters, else cut with ``marker`` (kept within the limit)."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    if len(marker) >= limit:
        return marker[:limit]
    room = limit - len(marker)
    return text[:room] + marker if keep == "head" else marker + text[len(text) - room:]


def escape_mentions(text: str) -> str:
    """Break ``@everyone``, ``@here`` and ``<@id>``/``<@&id>``/``<#id>`` so they never ping or resolve.

    ``AllowedMentions.none()`` on the client is the real guarantee; this keeps the text from
    even looking like a ping (and from highlighting in clients).
    """
    text = _MENTION.sub(lambda m: "@" + ZWSP + m.group(1), text)
    return _ROLE_OR_USER.sub(lambda m: "<" + m.group(1) + ZWSP + m.group(2) + ">", text)


def escape(text: str) -> str:
    """Escape markdown and mentions of untrusted text shown inside formatted content."""
    return escape_mentions(discord.utils.escape_markdown(text))


def neutralise_backticks(text: str) -> str:
    """Insert a zero-width space between consecutive backticks, so text cannot close a code block."""
    return _BACKTICK_RUN.sub("`" + ZWSP, text)


def pagify(text: str, limit: int = CONTENT_LIMIT, *, delims: Sequence[str] = ("\n",)) -> Iterator[str]:
    """Split ``text`` into pages of at most ``limit`` chars, preferring to cut at ``delims``.

    The delimiter at a cut is dropped (a newline between pages says nothing); a line longer
    than ``limit`` is hard-split.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    while len(text) > limit:
        cut = max(text.rfind(d, 0, limit + 1) for d in delims) if delims else -1
        if cut <= 0:
            yield text[:limit]
            text = text[limit:]
            continue
        yield text[:cut]
        text = text[cut + 1:]
    if text:
        yield text


def _clean_lang(lang: str) -> str:
    return re.sub(r"[^A-Za-z0-9_+-]", "", lang)[:16]


def _code_body(text: str) -> str:
    return escape_mentions(neutralise_backticks(text)).rstrip("\n")


def _code_block_size(text: str, lang: str = "") -> int:
    """The length ``code_block`` needs to show ``text`` whole."""
    return len(f"```{_clean_lang(lang)}\n") + max(1, len(_code_body(text))) + len("\n```")


def code_block(text: str, *, lang: str = "", limit: int = CONTENT_LIMIT,
               keep: Literal["head", "tail"] = "head") -> str:
    """``text`` in a fenced code block of at most ``limit`` characters (fences included).

    Backticks are neutralised and mentions broken; when cut, whole lines are dropped from the
    end (``keep="head"``) or the start (``keep="tail"``, for logs) and a marker line says so.
    """
    lang = _clean_lang(lang)
    body = _code_body(text)
    opening, closing = f"```{lang}\n", "\n```"
    room = limit - len(opening) - len(closing)
    if room <= 0:
        raise ValueError(f"limit {limit} is too small for a code block")
    if len(body) <= room:
        return opening + (body or ZWSP) + closing
    lines = body.split("\n")
    kept: list[str] = []
    used = 0
    marker_room = len(f"[… {len(lines)} more lines]\n")
    budget = room - marker_room
    order = lines if keep == "head" else list(reversed(lines))
    for line in order:
        if used + len(line) + 1 > budget:
            break
        kept.append(line)
        used += len(line) + 1
    if not kept:  # one huge line: cut inside it
        piece = truncate(order[0], max(1, budget - 1), keep=keep)
        kept, dropped = [piece], len(lines) - 1
    else:
        dropped = len(lines) - len(kept)
    marker = f"[… {dropped} more line{'s' if dropped != 1 else ''}]" if dropped else f"[{ELLIPSIS}]"
    if keep == "head":
        inner = "\n".join([*kept, marker])
    else:
        inner = "\n".join([marker, *reversed(kept)])
    return opening + truncate(inner, room, keep=keep) + closing


def inline_code(text: str, limit: int = 200) -> str:
    """``text`` as inline code (single line, no backticks that could break out)."""
    clean = escape_mentions(text.replace("`", "ˋ").replace("\n", " "))
    return f"`{truncate(clean, max(1, limit - 2)) or ZWSP}`"


def progress_bar(done: int, total: int, width: int = 10) -> str:
    """``▰▰▰▱▱▱▱▱▱▱ 3/10``: a bar that reads on a phone (no monospace needed)."""
    total = max(total, 1)
    done = min(max(done, 0), total)
    filled = round(width * done / total)
    return "▰" * filled + "▱" * (width - filled) + f" {done}/{total}"


def money(value: float | None, digits: int = 2) -> str:
    return "?" if value is None else f"${value:,.{digits}f}"


def timestamp(ts: float | None, style: str = "R") -> str:
    """A Discord timestamp (rendered in each reader's time zone)."""
    return "?" if ts is None else f"<t:{int(ts)}:{style}>"


# ---------------------------------------------------------------- embeds


def _field_text(text: str | None, limit: int) -> str:
    text = (text or "").strip()
    return truncate(text, limit) if text else ZWSP


def fit_embed(embed: discord.Embed, budget: int = EMBED_TOTAL_LIMIT) -> discord.Embed:
    """Cut ``embed`` (in place, and returned) to every per-part limit and to ``budget`` in total.

    What goes first when over budget: the description's tail, then fields from the end (a last
    field says how many were dropped), then title and footer.
    """
    if embed.title:
        embed.title = truncate(embed.title, EMBED_TITLE_LIMIT)
    if embed.description:
        embed.description = truncate(embed.description, EMBED_DESCRIPTION_LIMIT)
    if embed.author and embed.author.name:
        embed.set_author(name=truncate(embed.author.name, EMBED_AUTHOR_LIMIT), url=embed.author.url,
                         icon_url=embed.author.icon_url)
    if embed.footer and embed.footer.text:
        embed.set_footer(text=truncate(embed.footer.text, EMBED_FOOTER_LIMIT), icon_url=embed.footer.icon_url)
    fields = [(_field_text(f.name, EMBED_FIELD_NAME_LIMIT), _field_text(f.value, EMBED_FIELD_VALUE_LIMIT),
               bool(f.inline)) for f in embed.fields]
    dropped = 0
    if len(fields) > EMBED_MAX_FIELDS:
        dropped = len(fields) - (EMBED_MAX_FIELDS - 1)
        fields = fields[: EMBED_MAX_FIELDS - 1]

    def rebuild() -> None:
        embed.clear_fields()
        for name, value, inline in fields:
            embed.add_field(name=name, value=value, inline=inline)
        if dropped:
            embed.add_field(name=ELLIPSIS, value=f"{dropped} more not shown", inline=False)

    if fields or dropped:
        rebuild()
    over = len(embed) - budget
    if over > 0 and embed.description:
        keep = max(0, len(embed.description) - over)
        embed.description = truncate(embed.description, keep) if keep >= 2 else None
    while len(embed) > budget and fields:
        fields.pop()
        dropped += 1
        rebuild()
    over = len(embed) - budget
    if over > 0 and embed.footer and embed.footer.text:
        embed.set_footer(text=truncate(embed.footer.text, max(0, len(embed.footer.text) - over)) or None)
    over = len(embed) - budget
    if over > 0 and embed.title:
        embed.title = truncate(embed.title, max(0, len(embed.title) - over)) or None
    if len(embed) > budget:  # only the "N more" field can still be in the way
        embed.clear_fields()
    return embed


def fit_embeds(embeds: Sequence[discord.Embed]) -> list[discord.Embed]:
    """At most 10 embeds sharing Discord's 6000-character total; earlier embeds get what they need."""
    out: list[discord.Embed] = []
    left = EMBED_TOTAL_LIMIT
    for embed in list(embeds)[:MAX_EMBEDS]:
        if left <= 0:
            break
        fit_embed(embed, budget=left)
        left -= len(embed)
        out.append(embed)
    return out


# ---------------------------------------------------------------- whole messages


@dataclass
class Attachment:
    """A file to attach; ``discord.File`` objects are single-use, so build one per send."""

    filename: str
    data: bytes

    def file(self) -> discord.File:
        return discord.File(io.BytesIO(self.data), filename=self.filename)


@dataclass
class Reply:
    """Content, embeds and an optional file, already within Discord's limits."""

    content: str | None = None
    embeds: list[discord.Embed] = field(default_factory=list)
    attachment: Attachment | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``send``/``followup.send``/``channel.send``."""
        out: dict[str, Any] = {}
        if self.content is not None:
            out["content"] = self.content
        if self.embeds:
            out["embeds"] = self.embeds
        if self.attachment is not None:
            out["file"] = self.attachment.file()
        return out

    def edit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``edit``/``edit_message`` (replaces content and embeds)."""
        out: dict[str, Any] = {"content": self.content, "embeds": self.embeds}
        if self.attachment is not None:
            out["attachments"] = [self.attachment.file()]
        return out


def safe_filename(name: str, default: str = "output.txt") -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:64]
    return clean or default


class Render:
    """Redaction plus the helpers above, bound to the bot's secrets. One instance per bot."""

    def __init__(self, redactor: Redacting | None = None) -> None:
        self.redactor: Redacting = redactor or _NoRedaction()

    def redact(self, text: object) -> str:
        return self.redactor.redact("" if text is None else str(text))

    def text(self, value: object, limit: int | None = None) -> str:
        """Untrusted text for formatted content: redacted, escaped, optionally cut to ``limit``."""
        out = escape(self.redact(value))
        return truncate(out, limit) if limit is not None else out

    def plain(self, value: object, limit: int) -> str:
        """Untrusted text for places without markdown (button labels, select options, choices)."""
        out = escape_mentions(self.redact(value).replace("\n", " "))
        return truncate(out, limit)

    def code(self, text: object, *, lang: str = "", limit: int = CONTENT_LIMIT,
             keep: Literal["head", "tail"] = "head") -> str:
        return code_block(self.redact(text), lang=lang, limit=limit, keep=keep)

    def inline(self, text: object, limit: int = 200) -> str:
        return inline_code(self.redact(text), limit)

    def content(self, text: str, limit: int = CONTENT_LIMIT) -> str:
        """Trusted, already-formatted content: redacted (a last safety net) and cut to the limit."""
        return truncate(self.redact(text), limit)

    def embed(self, *, title: str | None = None, description: str | None = None,
              colour: discord.Colour | int | None = None, url: str | None = None,
              fields: Iterable[tuple[str, str] | tuple[str, str, bool]] = (),
              footer: str | None = None) -> discord.Embed:
        """An embed from already-formatted parts (use ``text``/``code`` on untrusted pieces), fitted."""
        embed = discord.Embed(title=self.redact(title) if title else None,
                              description=self.redact(description) if description else None,
                              colour=colour, url=url)
        for item in fields:
            name, value = item[0], item[1]
            inline = bool(item[2]) if len(item) > 2 else True
            embed.add_field(name=self.redact(name), value=self.redact(value), inline=inline)
        if footer:
            embed.set_footer(text=self.redact(footer))
        return fit_embed(embed)

    def long_text(self, text: str, *, header: str = "", filename: str = "output.txt", lang: str = "",
                  keep: Literal["head", "tail"] = "tail") -> Reply:
        """``header`` and ``text`` in a code block, or, when that does not fit one message, a short
        preview in the message and the whole (redacted) text as a file."""
        redacted = self.redact(text)
        header = self.content(header, 400) if header else ""
        prefix = header + "\n" if header else ""
        if len(prefix) + _code_block_size(redacted, lang) <= CONTENT_LIMIT:
            return Reply(content=prefix + code_block(redacted, lang=lang, limit=CONTENT_LIMIT - len(prefix)))
        data = redacted.encode("utf-8", "replace")
        note = f"{len(redacted.splitlines())} lines, {len(data):,} bytes: full text attached."
        if len(data) > FILE_LIMIT:
            data = data[len(data) - FILE_LIMIT:]
            note = f"{len(redacted.splitlines())} lines: the last {FILE_LIMIT // (1024 * 1024)} MiB attached."
        intro = f"{prefix}{note}\n"
        preview = code_block(redacted, lang=lang, limit=min(900, CONTENT_LIMIT - len(intro)), keep=keep)
        return Reply(content=truncate(intro + preview, CONTENT_LIMIT),
                     attachment=Attachment(safe_filename(filename), data))


def check_limits(payload: dict[str, Any]) -> list[str]:
    """Every Discord size limit a message payload (JSON, as sent) breaks; empty when it fits.

    Used by tests and as a guard in the notifier's logs; mirrors what Discord answers with 50035.
    """
    problems: list[str] = []
    content = payload.get("content") or ""
    if len(content) > CONTENT_LIMIT:
        problems.append(f"content {len(content)} > {CONTENT_LIMIT}")
    embeds = payload.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        problems.append(f"{len(embeds)} embeds > {MAX_EMBEDS}")
    total = 0
    for i, emb in enumerate(embeds):
        for key, limit in (("title", EMBED_TITLE_LIMIT), ("description", EMBED_DESCRIPTION_LIMIT)):
            value = emb.get(key) or ""
            total += len(value)
            if len(value) > limit:
                problems.append(f"embed {i} {key} {len(value)} > {limit}")
        fields = emb.get("fields") or []
        if len(fields) > EMBED_MAX_FIELDS:
            problems.append(f"embed {i} has {len(fields)} fields > {EMBED_MAX_FIELDS}")
        for j, fld in enumerate(fields):
            name, value = fld.get("name") or "", fld.get("value") or ""
            total += len(name) + len(value)
            if len(name) > EMBED_FIELD_NAME_LIMIT or not name:
                problems.append(f"embed {i} field {j} name length {len(name)}")
            if len(value) > EMBED_FIELD_VALUE_LIMIT or not value:
                problems.append(f"embed {i} field {j} value length {len(value)}")
        footer = (emb.get("footer") or {}).get("text") or ""
        author = (emb.get("author") or {}).get("name") or ""
        total += len(footer) + len(author)
        if len(footer) > EMBED_FOOTER_LIMIT:
            problems.append(f"embed {i} footer {len(footer)} > {EMBED_FOOTER_LIMIT}")
        if len(author) > EMBED_AUTHOR_LIMIT:
            problems.append(f"embed {i} author {len(author)} > {EMBED_AUTHOR_LIMIT}")
    if total > EMBED_TOTAL_LIMIT:
        problems.append(f"embeds total {total} > {EMBED_TOTAL_LIMIT}")
    return problems
