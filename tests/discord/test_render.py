"""bot.render at Discord's exact limits: truncation, pagination, code blocks, embeds, files, escaping."""

from __future__ import annotations

import discord
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import render
from bot.render import (
    CONTENT_LIMIT,
    EMBED_DESCRIPTION_LIMIT,
    EMBED_FIELD_NAME_LIMIT,
    EMBED_FIELD_VALUE_LIMIT,
    EMBED_FOOTER_LIMIT,
    EMBED_MAX_FIELDS,
    EMBED_TITLE_LIMIT,
    EMBED_TOTAL_LIMIT,
    Render,
    check_limits,
    code_block,
    escape,
    fit_embed,
    fit_embeds,
    pagify,
    progress_bar,
    truncate,
)
from bot.watch.redact import Redactor

TOKEN = "hf_" + "A1b2C3d4" * 5


def test_truncate_keeps_text_that_fits_exactly() -> None:
    assert truncate("x" * 2000, 2000) == "x" * 2000


def test_truncate_cuts_one_over_to_the_limit_with_a_marker() -> None:
    out = truncate("x" * 2001, 2000)
    assert len(out) == 2000 and out.endswith("…")


def test_truncate_tail_keeps_the_end() -> None:
    out = truncate("a" * 10 + "END", 6, keep="tail")
    assert len(out) == 6 and out.endswith("END")


def test_pagify_splits_at_newlines_and_never_exceeds() -> None:
    text = "\n".join(f"line {i:04d}" for i in range(1000))
    pages = list(pagify(text, 2000))
    assert all(len(p) <= 2000 for p in pages)
    assert "\n".join(pages) == text  # only the newline at each cut is dropped


def test_pagify_hard_splits_a_long_line() -> None:
    pages = list(pagify("y" * 4001, 2000))
    assert [len(p) for p in pages] == [2000, 2000, 1]


@given(st.text(max_size=5000), st.integers(min_value=1, max_value=300))
def test_pagify_property(text: str, limit: int) -> None:
    assert all(0 < len(p) <= limit for p in pagify(text, limit))


def test_code_block_exactly_at_the_limit_is_not_cut() -> None:
    body = "z" * (CONTENT_LIMIT - len("```\n") - len("\n```"))
    block = code_block(body)
    assert len(block) == CONTENT_LIMIT and "more line" not in block and body in block


def test_code_block_one_over_is_cut_to_the_limit_keeping_the_tail() -> None:
    lines = [f"{i:05d} " + "q" * 40 for i in range(100)]
    block = code_block("\n".join(lines), keep="tail", limit=1000)
    assert len(block) <= 1000
    assert lines[-1] in block and lines[0] not in block and "more lines]" in block


def test_code_block_cannot_be_closed_by_backticks_in_the_text() -> None:
    block = code_block("before ``` after\n````\n`")
    inner = block[len("```\n"):-len("\n```")]
    assert "``" not in inner


@given(st.text(max_size=3000))
def test_code_block_property(text: str) -> None:
    block = code_block(text, limit=CONTENT_LIMIT)
    assert len(block) <= CONTENT_LIMIT
    assert block.startswith("```") and block.endswith("\n```")
    assert "``" not in block[3:-4]


def test_escape_breaks_mentions_and_markdown() -> None:
    out = escape("@everyone **bold** <@123456789012345678> <@&123456789012345678> @here")
    assert "@everyone" not in out and "@here" not in out
    assert "<@123456789012345678>" not in out and "<@&123456789012345678>" not in out
    assert "\\*\\*bold\\*\\*" in out


def test_render_redacts_before_escaping() -> None:
    r = Render(Redactor({"HF_TOKEN": TOKEN}))
    out = r.text(f"token={TOKEN} and hf_{'x' * 40}")
    assert TOKEN not in out and "hf_" + "x" * 40 not in out


def _fits(embed: discord.Embed) -> bool:
    return not check_limits({"embeds": [embed.to_dict()]})


def test_fit_embed_per_part_limits() -> None:
    e = discord.Embed(title="t" * 300, description="d" * 5000)
    e.set_footer(text="f" * 3000)
    for i in range(30):
        e.add_field(name="n" * 300, value="v" * 2000 if i else "", inline=True)
    fit_embed(e)
    assert len(e.title or "") <= EMBED_TITLE_LIMIT
    assert len(e.description or "") <= EMBED_DESCRIPTION_LIMIT
    assert len(e.footer.text or "") <= EMBED_FOOTER_LIMIT
    assert len(e.fields) <= EMBED_MAX_FIELDS
    assert all(len(f.name or "") <= EMBED_FIELD_NAME_LIMIT for f in e.fields)
    assert all(0 < len(f.value or "") <= EMBED_FIELD_VALUE_LIMIT for f in e.fields)
    assert len(e) <= EMBED_TOTAL_LIMIT and _fits(e)
    assert "more not shown" in (e.fields[-1].value or "")


def test_fit_embed_at_exact_total_is_untouched() -> None:
    e = discord.Embed(title="t" * 256, description="d" * 4096)
    e.add_field(name="n" * 256, value="v" * 1024)
    e.add_field(name="n", value="v" * (EMBED_TOTAL_LIMIT - 256 - 4096 - 256 - 1024 - 1))
    before = e.to_dict()
    fit_embed(e)
    assert e.to_dict() == before and len(e) == EMBED_TOTAL_LIMIT


def test_fit_embed_one_over_total_is_cut() -> None:
    e = discord.Embed(title="t" * 256, description="d" * 4096)
    e.add_field(name="n", value="v" * 1024)
    e.add_field(name="n", value="v" * (EMBED_TOTAL_LIMIT - 256 - 4096 - 1024 - 2 + 1))
    assert len(e) == EMBED_TOTAL_LIMIT + 1
    fit_embed(e)
    assert len(e) <= EMBED_TOTAL_LIMIT and _fits(e)


def test_fit_embeds_share_the_total() -> None:
    embeds = [discord.Embed(description="d" * 4000) for _ in range(12)]
    out = fit_embeds(embeds)
    assert len(out) <= 10 and sum(len(e) for e in out) <= EMBED_TOTAL_LIMIT


def test_long_text_fits_in_a_message_when_short() -> None:
    reply = Render().long_text("short log", header="**logs**", filename="x.log")
    assert reply.attachment is None and reply.content is not None and "short log" in reply.content


def test_long_text_at_the_boundary() -> None:
    header = "h"
    room = CONTENT_LIMIT - len(header) - 1 - len("```\n") - len("\n```")
    exact = Render().long_text("x" * room, header=header)
    assert exact.attachment is None and len(exact.content or "") == CONTENT_LIMIT
    over = Render().long_text("x" * (room + 1), header=header)
    assert over.attachment is not None and len(over.content or "") <= CONTENT_LIMIT


def test_long_text_becomes_a_redacted_file() -> None:
    r = Render(Redactor({"HF_TOKEN": TOKEN}))
    text = "\n".join(f"line {i} {TOKEN if i == 500 else ''} @everyone" for i in range(2000))
    reply = r.long_text(text, header="logs", filename="rental 1.log")
    assert reply.attachment is not None
    assert reply.attachment.filename == "rental_1.log"
    assert TOKEN.encode() not in reply.attachment.data
    assert len(reply.content or "") <= CONTENT_LIMIT and "@everyone" not in (reply.content or "")
    assert "line 1999" in (reply.content or "")  # the preview shows the tail


def test_check_limits_reports_each_problem() -> None:
    assert check_limits({"content": "x" * 2000}) == []
    assert check_limits({"content": "x" * 2001})
    assert check_limits({"embeds": [{"title": "t" * 257}]})
    assert check_limits({"embeds": [{"fields": [{"name": "", "value": "v"}]}]})


def test_progress_bar_bounds() -> None:
    assert progress_bar(0, 10).startswith("▱" * 10)
    assert progress_bar(10, 10).startswith("▰" * 10)
    assert progress_bar(99, 10).endswith("10/10")


@pytest.mark.parametrize("limit", [0, -1])
def test_truncate_nonpositive_limit(limit: int) -> None:
    assert render.truncate("abc", limit) == ""
