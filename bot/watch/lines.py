"""Turn raw provisioning-log bytes, in chunks of any size, into clean text lines.

The same byte stream always yields the same lines however it is split into chunks: a partial
last line waits for its newline, UTF-8 is decoded incrementally (a character split across two
chunks decodes correctly; invalid bytes become U+FFFD, never an exception), ANSI/OSC escapes and
control characters are removed, and carriage-return progress bars (curl, wget, tqdm) collapse to
their last state instead of producing hundreds of lines.

Rule for a physical line (the text between two ``\\n``) that contains ``\\r``: it is split into
segments; blank segments are dropped (so ``\\r\\n`` is an ordinary line end); the last non-blank
segment is always kept, and an earlier segment is kept only when it reads like a message worth
classifying (it mentions an error, a failure, a refusal...), at most ``MAX_KEPT_SEGMENTS`` of them.
A physical line with no visible text yields one empty line, so a log without ``\\r`` numbers its
lines exactly like ``wc -l`` and an editor do.

An over-long segment keeps its start and its end (pip, tar and tqdm print the error last) with
``… [N chars cut] …`` between them. Redaction runs after this module, so the cut must not leave a
piece of a secret readable: the head ends and the tail starts at a space, the whole word that
straddles either cut is dropped, and the first words of the tail are dropped too, so a value whose
key name was cut off (``--token VALUE``, ``Authorization: Bearer VALUE``) is not shown without it.
"""

from __future__ import annotations

import codecs
import re

MAX_LINE_CHARS = 8192
MAX_KEPT_SEGMENTS = 3
# Words dropped at the start of a cut line's tail: the longest key-to-value distance the redaction
# patterns rely on ("Authorization: Bearer VALUE", "password is VALUE") is three words.
TAIL_CONTEXT_WORDS = 3
_SPACE = " \t"

# CSI (colours, cursor moves, erase-line), OSC (window titles, hyperlinks; ended by BEL or ST, or
# cut off by the end of the segment), and the two-character escapes (charset selection, RIS...).
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*+[ -/]*+[@-~]"
    r"|\x1b\][^\x07\x1b]*+(?:\x07|\x1b\\|$)"
    r"|\x1b[ -/]*+[0-~]"
    r"|\x9b[0-?]*+[ -/]*+[@-~]"
)
# Whatever control characters remain (NUL, BEL, backspace, a lone ESC, C1 controls) carry no text.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# An earlier CR-separated segment is kept only when it could matter to the classifier.
_NOTABLE_WORDS = ("error", "fail", "fatal", "exception", "traceback", "denied", "refused", "no space",
                  "not found", "unauthori", "forbidden", "killed", "abort")


def _notable(text: str) -> bool:
    low = text.lower()
    for word in _NOTABLE_WORDS:  # a loop of `in` tests beats an IGNORECASE alternation here
        if word in low:
            return True
    return False


def clean_segment(raw: str) -> str:
    """Strip escapes and control characters, and trailing whitespace."""
    if _CONTROLS.search(raw) is None:
        return raw.rstrip()
    if "\x1b" in raw or "\x9b" in raw:
        raw = _ESCAPES.sub("", raw)
    return _CONTROLS.sub("", raw).rstrip()


class LineAssembler:
    """Incremental bytes-to-lines reassembly for one log stream.

    ``feed`` returns the lines completed by this chunk; ``flush`` returns the rest at end of stream
    (and resets, so the assembler can be reused for a new stream). ``line_count`` is the number of
    lines emitted so far, so the i-th line of a ``feed`` result (0-based) has the 1-based number
    ``line_count - len(result) + i + 1``; ``feed_numbered`` does that arithmetic.
    """

    def __init__(self, max_line_chars: int = MAX_LINE_CHARS) -> None:
        if max_line_chars < 16:
            raise ValueError("max_line_chars must be at least 16")
        self._max = max_line_chars
        # A segment up to max_line_chars is kept whole: the head holds its first half and the tail
        # its last half, which join back exactly when nothing was cut.
        self._head_max = max_line_chars // 2
        self._tail_max = max_line_chars - self._head_max
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.line_count = 0
        self.pending_bytes = 0  # bytes after the last b"\n": where a restart must resume reading
        self._reset_line()

    # -- public -----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[str]:
        """Consume a chunk; return the lines it completed."""
        if not data:
            return []
        # 0x0A never occurs inside a UTF-8 sequence, so the raw newline count is exact.
        nl = data.rfind(b"\n")
        self.pending_bytes = len(data) - nl - 1 if nl >= 0 else self.pending_bytes + len(data)
        text = self._decoder.decode(data)
        out: list[str] = []
        if not text:
            return out
        parts = text.split("\n")
        last = len(parts) - 1
        for i, part in enumerate(parts):
            if part:
                self._absorb(part)
            if i < last:
                self._end_line(out)
        self.line_count += len(out)
        return out

    def feed_numbered(self, data: bytes) -> list[tuple[int, str]]:
        """Like ``feed`` but pairs each line with its 1-based line number."""
        lines = self.feed(data)
        first = self.line_count - len(lines) + 1
        return [(first + i, line) for i, line in enumerate(lines)]

    def flush(self) -> list[str]:
        """End of stream: return the unterminated last line (if it has visible text) and reset."""
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._absorb(tail)
        out: list[str] = []
        self._end_segment()
        if self._last is not None:
            self._end_line(out)
        self._reset_line()
        self._decoder.reset()
        self.pending_bytes = 0
        self.line_count += len(out)
        return out

    # -- internals --------------------------------------------------------------------------------
    def _reset_line(self) -> None:
        self._seg: list[str] = []  # the segment's first characters (up to the head size)
        self._seg_len = 0
        self._seg_dropped = 0  # characters after the head (their last ones are in _tail)
        self._tail: list[str] = []
        self._tail_len = 0
        self._last: str | None = None  # last non-blank segment of the current physical line
        self._kept: list[str] = []  # notable earlier segments of the current physical line

    def _absorb(self, part: str) -> None:
        if "\r" not in part:
            self._append(part)
            return
        segments = part.split("\r")
        self._append(segments[0])
        for seg in segments[1:]:
            self._end_segment()
            if seg:
                self._append(seg)

    def _append(self, piece: str) -> None:
        room = self._head_max - self._seg_len
        if room > 0:
            self._seg.append(piece[:room])
            self._seg_len += min(room, len(piece))
            piece = piece[room:]
            if not piece:
                return
        # Past the head: keep a rolling window of the segment's last characters.
        self._seg_dropped += len(piece)
        self._tail.append(piece)
        self._tail_len += len(piece)
        if self._tail_len > 2 * self._tail_max:
            joined = "".join(self._tail)[-self._tail_max:]
            self._tail = [joined]
            self._tail_len = len(joined)

    def _end_segment(self) -> None:
        if not self._seg:
            return
        raw = self._seg[0] if len(self._seg) == 1 else "".join(self._seg)
        tail = "".join(self._tail)[-self._tail_max:] if self._tail else ""
        total = self._seg_len + self._seg_dropped
        self._seg = []
        self._seg_len = 0
        self._seg_dropped = 0
        self._tail = []
        self._tail_len = 0
        if total <= self._max:
            text = clean_segment(raw + tail)
        else:
            head, end = _safe_head(raw), _safe_tail(tail)
            cut = total - len(head) - len(end)
            head, end = clean_segment(head), clean_segment(end)
            text = (head + " " if head else "") + f"… [{cut} chars cut] …" + (" " + end if end else "")
        if not text.strip():
            return
        previous = self._last
        if (previous is not None and previous != text and len(self._kept) < MAX_KEPT_SEGMENTS
                and _notable(previous)
                and (not self._kept or self._kept[-1] != previous)):
            self._kept.append(previous)
        self._last = text

    def _end_line(self, out: list[str]) -> None:
        self._end_segment()
        if self._last is None:
            out.append("")
        else:
            if self._kept:
                out.extend(self._kept)
            out.append(self._last)
        self._last = None
        if self._kept:
            self._kept = []


def _safe_head(head: str) -> str:
    """``head`` up to its last space: the word the cut runs through is dropped whole."""
    cut = max(head.rfind(" "), head.rfind("\t"))
    return head[:cut] if cut >= 0 else ""


def _safe_tail(tail: str) -> str:
    """``tail`` from after its first word (cut through) and the ``TAIL_CONTEXT_WORDS`` words after it."""
    pos = 0
    for _ in range(TAIL_CONTEXT_WORDS + 1):
        while pos < len(tail) and tail[pos] not in _SPACE:
            pos += 1
        while pos < len(tail) and tail[pos] in _SPACE:
            pos += 1
    return tail[pos:]
