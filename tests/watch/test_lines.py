"""LineAssembler: chunk-boundary independence, CR progress bars, escapes, bad UTF-8, caps."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.watch.lines import MAX_KEPT_SEGMENTS, LineAssembler
from bot.watch.redact import Redactor


def feed_all(chunks: list[bytes], **kw: int) -> list[str]:
    asm = LineAssembler(**kw)
    out: list[str] = []
    for chunk in chunks:
        out.extend(asm.feed(chunk))
    out.extend(asm.flush())
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, prev = [], 0
    for p in points:
        chunks.append(data[prev:p])
        prev = p
    chunks.append(data[prev:])
    return chunks


# Bytes biased towards the interesting ones: newlines, CR, ESC, NUL, UTF-8 lead/continuation bytes.
interesting = st.sampled_from(
    [b"\n", b"\r", b"\r\n", b"\x1b[31m", b"\x1b]0;title\x07", b"\x00", b"\xe2\x82\xac", b"\xe2", b"\x82",
     b"\xf0\x9f\x98\x80", b"\xff", b"\xc3", b"ERROR: x", b"50%", b" ", b"abc", b"\t", b"\x1b"]
)
streams = st.lists(st.one_of(interesting, st.binary(max_size=12)), max_size=40).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(data=streams, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_chunking_yields_the_same_lines(data: bytes, cuts: list[int]) -> None:
    assert feed_all(split_at(data, cuts)) == feed_all([data])


@settings(max_examples=200, deadline=None)
@given(data=streams)
def test_byte_by_byte_equals_whole(data: bytes) -> None:
    assert feed_all([data[i:i + 1] for i in range(len(data))]) == feed_all([data])


@settings(max_examples=200, deadline=None)
@given(data=streams, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6))
def test_small_cap_is_chunking_independent_too(data: bytes, cuts: list[int]) -> None:
    assert feed_all(split_at(data, cuts), max_line_chars=16) == feed_all([data], max_line_chars=16)


@settings(max_examples=200, deadline=None)
@given(data=streams)
def test_output_lines_are_clean(data: bytes) -> None:
    for line in feed_all([data]):
        assert "\n" not in line and "\r" not in line and "\x00" not in line and "\x1b" not in line
        assert line == line.rstrip()


@settings(max_examples=200, deadline=None)
@given(data=streams, cut=st.integers(min_value=0, max_value=10_000))
def test_pending_bytes_points_at_the_start_of_the_partial_line(data: bytes, cut: int) -> None:
    cut %= len(data) + 1
    asm = LineAssembler()
    asm.feed(data[:cut])
    pending = asm.pending_bytes
    assert data[:cut].endswith(b"\n") is (pending == 0) or cut == 0
    # Resuming a fresh assembler from the partial line's first byte reproduces the remaining lines.
    first_part = LineAssembler()
    done = first_part.feed(data[:cut])
    resumed = LineAssembler()
    rest = resumed.feed(data[cut - pending:]) + resumed.flush()
    assert done + rest == feed_all([data])


def test_partial_last_line_waits_for_newline() -> None:
    asm = LineAssembler()
    assert asm.feed(b"Cloning into 'x'") == []
    assert asm.feed(b"...\nnext") == ["Cloning into 'x'..."]
    assert asm.line_count == 1
    assert asm.flush() == ["next"]
    assert asm.line_count == 2


def test_crlf_and_blank_lines_keep_file_numbering() -> None:
    asm = LineAssembler()
    lines = asm.feed_numbered(b"one\r\n\r\ntwo\n\nthree\n")
    assert lines == [(1, "one"), (2, ""), (3, "two"), (4, ""), (5, "three")]
    assert asm.feed_numbered(b"four\n") == [(6, "four")]


def test_progress_bar_collapses_to_last_state() -> None:
    bar = b"".join(f"\rmodel.safetensors:  {p}%|####  | {p}M/100M [00:01<00:02, 201MB/s]".encode()
                   for p in range(0, 101))
    assert feed_all([b"Downloading model\n" + bar + b"\n" + b"done\n"]) == [
        "Downloading model",
        "model.safetensors:  100%|####  | 100M/100M [00:01<00:02, 201MB/s]",
        "done",
    ]


def test_curl_meter_with_error_keeps_the_error() -> None:
    data = (b"  % Total    % Received % Xferd  Average Speed   Time\n"
            b"\r  0     0    0     0    0     0      0      0 --:--:-- --:--:--     0"
            b"\rcurl: (22) The requested URL returned error: 404\r  0    14    0     0    0     0\n")
    lines = feed_all([data])
    assert lines[1] == "curl: (22) The requested URL returned error: 404"
    assert lines[2].startswith("  0    14")


def test_notable_segments_are_bounded() -> None:
    data = b"".join(f"\rerror {i}".encode() for i in range(500)) + b"\n"
    lines = feed_all([data])
    assert len(lines) == MAX_KEPT_SEGMENTS + 1
    assert lines[-1] == "error 499"


def test_ansi_osc_and_nul_removed() -> None:
    data = b"\x1b[32mINFO\x1b[0m \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ a\x00b \x1b[?25l\x1b[2K\n"
    assert feed_all([data]) == ["INFO link ab"]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert feed_all([b"bad \xff\xfe byte\n", b"\xe2\x82"]) == ["bad \ufffd\ufffd byte", "\ufffd"]


def test_multibyte_split_across_chunks() -> None:
    assert feed_all([b"price \xe2", b"\x82", b"\xac\n"]) == ["price €"]


def test_overlong_line_keeps_its_start_and_its_end() -> None:
    words = " ".join(f"w{i:05d}" for i in range(4000))  # 27,999 characters
    lines = feed_all([b"pip install: " + words.encode() + b" ERROR: No space left on device\nok\n"])
    line = lines[0]
    assert line.startswith("pip install: w00000 w00001")
    assert line.endswith("w03999 ERROR: No space left on device")  # where pip, tar and tqdm put the error
    cut = re.search(r" … \[(\d+) chars cut\] … ", line)
    assert cut is not None and len(line) <= 8192 + len(cut.group(0))
    head, tail = line[:cut.start()], line[cut.end():]
    total = len("pip install: " + words + " ERROR: No space left on device")
    assert len(head) + int(cut.group(1)) + len(tail) == total
    assert lines[1] == "ok"


def test_line_of_exactly_the_cap_is_whole() -> None:
    line = ("ab " * 3000)[:8192].rstrip()
    assert feed_all([line.encode() + b"\n"]) == [line]


def test_one_giant_word_is_cut_whole() -> None:
    assert feed_all([b"x" * 20_000 + b"\n"]) == ["… [20000 chars cut] …"]


TOKEN = "hf_" + "Qw3rTy7UiOp9AsDfGhJkLzXcVbNm1"  # 34 characters, fake


@pytest.mark.parametrize("where", [8192 - 18, 4096 - 18, 4096 - 1, 4096, 20_000 - 4096 - 17, 20_000 - 4096])
def test_a_word_straddling_a_cut_is_dropped_whole(where: int) -> None:
    # The defect: a cut at 8,192 characters before redaction left 18 of this token's 34 characters.
    filler = "a " * 10_000
    line = filler[:where] + TOKEN + " " + filler[where:]
    out = feed_all([line.encode() + b"\n"])[0]
    redacted = Redactor().redact(out)
    for size in range(6, len(TOKEN) + 1):
        for start in range(len(TOKEN) - size + 1):
            assert TOKEN[start:start + size] not in redacted


@pytest.mark.parametrize("context", ["--token", "Authorization: Bearer", "password is", "API_KEY:"])
def test_a_value_whose_key_name_was_cut_is_dropped(context: str) -> None:
    secret = "Zz9SECRETVALUEzz9"
    # The tail starts right between the key name and the value.
    lead = "b " * 9000 + context
    rest = " " + secret + " then some ordinary words to end the line"
    line = lead + rest
    assert len(rest) < 4096 < len(line) - 4096
    out = feed_all([line.encode() + b"\n"])[0]
    assert secret not in Redactor().redact(out)


words = st.lists(st.text(st.sampled_from("abcXYZ019_-=:/"), min_size=1, max_size=12), max_size=40)


@settings(max_examples=300, deadline=None)
@given(before=words, after=words, cap=st.integers(min_value=16, max_value=80))
def test_no_piece_of_a_known_secret_survives_a_cut(before: list[str], after: list[str], cap: int) -> None:
    secret = "SECRET0123456789"
    line = " ".join([*before, secret, *after])
    out = Redactor({"T": secret}).redact(feed_all([line.encode() + b"\n"], max_line_chars=cap)[0])
    visible = re.sub(r"«redacted(?::T)?»", "\x00", out)
    for start in range(len(secret) - 5):
        assert secret[start:start + 6] not in visible


def test_flush_resets_for_reuse() -> None:
    asm = LineAssembler()
    asm.feed(b"a\nb")
    assert asm.flush() == ["b"]
    assert asm.flush() == []
    assert asm.feed(b"c\n") == ["c"]
    assert asm.line_count == 3
