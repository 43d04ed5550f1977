"""Remove secrets from log text before it is stored, posted or printed.

Order (reference §3): first every secret value the bot knows (its URL-encoded forms, and its base64
encodings at any byte alignment), replaced by ``«redacted:NAME»``; then patterns as a safety net
(private-key and PGP blocks, URL credentials, token and signature query parameters, Authorization and
API-key headers, cookies, secret-named assignments in plain or escaped JSON, Docker ``"auth"``, CLI
flags, passwords printed at boot, well-known token shapes, hex keys next to a key-ish word). Patterns
keep the key name and replace only the value. Git commit ids, pip ``--hash=sha256:`` values,
checksums and UUIDs stay readable: bare hex is never redacted without a key-ish word next to it.

Redaction is idempotent (markers are never matched again) and stable: ``redact`` repeats the
pattern pass until nothing changes, so redacting already-redacted text is a no-op.

Cost: every pattern is linear in the text's length. No quantifier is nested in another, a repeat
that is not the last thing a pattern matches is bounded or possessive (nothing backtracks into
it), and the number of ways a pattern can backtrack from one start position is small; a test
checks these rules on the parsed patterns and ``bench/bench_redact.py`` prints seconds per MB.

A ``Redactor`` holds no per-stream state and may be shared between threads: the compiled set of
known values is replaced as one object. Multi-line private keys need state across lines: use one
``RedactStream`` per stream (``Redactor.stream``), or ``redact_lines`` for a window of lines, which
also hides the rest of a key block when the window starts inside one.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote, quote_plus

from bot.watch.classifier import fold_lower, literal_gate, required_literals

MIN_SECRET_LEN = 6
MIN_BASE64_FORM = 8  # shorter base64 fragments of a known value would match unrelated text
MARK = "«redacted»"
# Names the pattern pass uses in its markers; known-value markers use the secret's own name.
_PATTERN_NAMES = ("private-key", "hf", "github", "api-key", "jwt", "discord", "slack", "stripe", "aws")
# A value group must not start at a marker, so a second pass never re-matches its own output.
_NM = r"(?!«redacted)"
# Whitespace between a key and its value: bounded and possessive, so nothing backtracks into it.
_S0 = r"\s{0,16}+"
_S1 = r"\s{1,16}+"

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _mark(name: str) -> str:
    return f"«redacted:{name}»"


# A quoted value: plain ("…" with backslash escapes), escaped JSON (\"…\") or single quotes. A quote
# that is never closed (or a value longer than 4096 characters) hides the rest of the line.
_QUOTED_VALUE = (
    r"\\\"" + _NM + r"[^\"\\\n]{0,4096}+\\\"|\\\"" + _NM + r"[^\"\\\n]++"
    r"|\"" + _NM + r"(?:[^\"\\\n]|\\.){0,4096}+\"|\"" + _NM + r"(?:[^\"\\\n]|\\.)++"
    r"|'" + _NM + r"[^'\n]{0,4096}+'|'" + _NM + r"[^'\n]++"
)
# The quote that may close a key name: plain or escaped (\"password\":…).
_KEY_QUOTE = r"(?:\\?[\"'])?"

# (name, compiled pattern, replacement). Replacement is a template with \1 etc. or a fixed marker.
_SECRET_WORDS = r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH_?KEY"
_PATTERNS: list[tuple[str, re.Pattern[str], str]] = [
    ("url_userinfo", re.compile(
        r"(?i)\b((?:https?|git|ssh|ftp)://)" + _NM + r"[^\s/:@«]{1,256}+:[^\s/@«]{1,4096}+@"),
     r"\1" + MARK + "@"),
    ("query_secret", re.compile(
        r"(?i)([?&;](?:token|access_token|auth_token|id_token|refresh_token|api_key|apikey|key|sig|signature"
        r"|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential"
        r"|password|passwd|secret|client_secret|policy|key-pair-id"
        r"|session|sessionid|session_id|sid|phpsessid|jsessionid)=)" + _NM + r"[^&\s\"'<>#]+"),
     r"\1" + MARK),
    ("authorization", re.compile(
        r"(?i)(\b(?:proxy-)?authorization" + _KEY_QUOTE + _S0 + r"[:=]" + _S0 + r"\\?[\"']?"
        r"(?:(?:bearer|basic|token|digest|bot)" + _S1 + r")?)"
        + _NM + r"(?!(?:bearer|basic|token|digest|bot)\b)[^\s\"',;)\\]+"),
     r"\1" + MARK),
    # API-key and token headers with any value (X-Api-Key, X-Auth-Token, Api-Key, Private-Token...).
    ("key_header", re.compile(
        r"(?i)(\b(?:x-[a-z0-9-]{0,32}?(?:api-?key|token|secret|auth|password|signature)[a-z0-9-]{0,16}+"
        r"|api-key|private-token|auth-token)" + _KEY_QUOTE + _S0 + r":" + _S0 + r"\\?[\"']?)"
        + _NM + r"[^\s\"',;\\]+"),
     r"\1" + MARK),
    ("cookie", re.compile(r"(?i)(\b(?:set-)?cookie" + _KEY_QUOTE + _S0 + r":" + _S0 + r")" + _NM
                          + r"[^\"'\n\\]+"),
     "cookie"),  # replaced by _cookie: every value in the header, names kept
    ("bearer", re.compile(r"(?i)(\bbearer" + _S1 + r")" + _NM + r"[A-Za-z0-9._~+/=-]{8,}"), r"\1" + MARK),
    ("caddy_banner", re.compile(
        r"(?i)(web credentials are:" + _S0 + r"[^\s/]{1,256}+" + _S0 + r"/" + _S0 + r")" + _NM + r"\S+"),
     r"\1" + MARK),
    ("caddy_token", re.compile(r"(?i)(open button token is also valid:" + _S0 + r")" + _NM + r"\S+"),
     r"\1" + MARK),
    ("cli_flag", re.compile(
        r"(?i)(--(?:api[-_]?key|token|password|passwd|secret|hf[-_]token|access[-_]token|auth[-_]token"
        r"|civitai[-_]token|tunnel[-_]token)(?:" + _S0 + r"=" + _S0 + r"|" + _S1 + r")[\"']?)"
        + _NM + r"[^\s\"']+"),
     r"\1" + MARK),
    # NAME=value, NAME: value, "name": "value", \"name\":\"value\" where NAME contains a secret word.
    ("env_assign", re.compile(
        r"(?i)(\b(?:export" + _S1 + r")?(?![A-Z0-9_]{0,64}TOKENI[SZ])(?=[A-Z0-9_]{0,64}(?:" + _SECRET_WORDS
        + r"))[A-Z0-9_]{1,128}+" + _KEY_QUOTE + _S0 + r"[=:]" + _S0 + r")"
        r"(?:" + _QUOTED_VALUE + r"|" + _NM + r"[^\s\"',;\\]+)"),
     r"\1" + MARK),
    # Docker's config.json: "auth": "base64(user:password)".
    ("docker_auth", re.compile(r"(?i)(\\?\"auth\\?\"" + _S0 + r":" + _S0 + r")(?:" + _QUOTED_VALUE + r")"),
     r"\1" + MARK),
    ("boot_password", re.compile(
        r"(?i)(\bpass(?:word|wd)\b" + _S0 + r"(?::|\bis\b)" + _S0 + r"[\"']?)" + _NM
        + r"(?!(?:invalid|incorrect|wrong|required|not|set|empty|missing|too|the|a|an|being|correct|unset"
        r"|none|null|expired|changed)\b)[^\s\"',;]+"),
     r"\1" + MARK),
    ("hf_token", re.compile(r"hf_[A-Za-z0-9]{30,}"), _mark("hf")),
    ("github_token", re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}"),
     _mark("github")),
    ("openai_key", re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}"),
     _mark("api-key")),
    ("slack_token", re.compile(r"(?<![A-Za-z0-9_-])xox[abposre]-[A-Za-z0-9-]{10,}"), _mark("slack")),
    ("slack_webhook", re.compile(r"(?i)(https://hooks\.slack\.com/(?:services|workflows|triggers)/)[\w/-]+"),
     r"\1" + MARK),
    ("stripe_key", re.compile(r"(?<![A-Za-z0-9_])(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"
                              r"|(?<![A-Za-z0-9_])whsec_[A-Za-z0-9]{16,}"), _mark("stripe")),
    ("aws_key_id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}(?![A-Z0-9])"),
     _mark("aws")),
    ("jwt_like", re.compile(r"\beyJ[A-Za-z0-9_-]{15,}+(?:\.[A-Za-z0-9_-]{6,}+(?:\.[A-Za-z0-9_-]{6,}+)?)?"),
     _mark("jwt")),
    ("discord_webhook", re.compile(
        r"(?i)(https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d{1,32}+/)[\w-]+"), r"\1" + MARK),
    ("discord_token", re.compile(r"(?<![\w.-])[MNO][A-Za-z\d_-]{22,27}\.[A-Za-z\d_-]{6,7}\.[A-Za-z\d_-]{27,}"),
     _mark("discord")),
    ("hex_context", re.compile(
        r"(?i)((?:api[_ -]?key|token|secret|password|civitai|vast[_ -]?key)\W{1,3})" + _NM + r"[a-f0-9]{32,64}\b"),
     r"\1" + MARK),
]

# Signed URLs (Azure SAS, S3/GCS presigned): once a URL carries a signature, its other auth
# parameters (expiry, permissions, key ids) are part of the bearer credential too. A URL is found
# whole (possessive, so a failed search never rescans it), then its parameters are checked.
_URL = re.compile(r"(?i)https?://[^\s\"'<>]++")
_URL_SIGNED = re.compile(r"(?i)[?&](?:sig|signature|x-amz-signature|x-goog-signature)=")
_SIGNED_PARAMS = re.compile(
    r"(?i)([?&](?:se|sp|sv|st|sr|spr|srt|ss|skoid|sktid|skt|ske|sks|skv)=)" + _NM + r"[^&\s\"'<>#]+")
_COOKIE_VALUE = re.compile(r"(=" + _S0 + r")" + _NM + r"[^;,\s]+")

# Private keys (PEM and PGP armour). BEGIN..END within one text is replaced whole; an unterminated
# BEGIN hides the rest of the text; an END with no BEGIN before it hides the key-body lines above it.
_KEY_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_KEY_END = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
# A line that can be part of a key body: base64, blank, or a PEM/PGP armour header.
_KEY_BODY = re.compile(
    r"\s*+(?:[A-Za-z0-9+/=]++|(?:Proc-Type|DEK-Info|Version|Comment|Hash|Charset|MessageID):[^\n]*+)?\s*+")
# A window that starts mid-file may start inside a key: a first line shaped like key body hides
# (a long base64 run, or a short one with a digit or +/, as the cut last line of a key often is).
_KEY_BODY_STRICT = re.compile(r"[A-Za-z0-9+/]{40,}+={0,2}+|(?=[A-Za-z]{0,39}[0-9+/])[A-Za-z0-9+/]{8,39}+={0,2}+")

# Cheap gate on the lower-cased line: a line without any of these cannot match a pattern, so most lines
# skip the regexes (a test checks the gate never changes a result). Discord bot tokens and AWS key ids
# have no keyword; their own cheap shapes are their gates.
TRIGGER_WORDS = ("token", "key", "secret", "pass", "auth", "bearer", "credential", "sig=", "signature=",
                 "policy=", "hf_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat", "sk-", "eyj", "://",
                 "civitai", "vast", "cookie", "session", "sid=", "xox", "_live_", "_test_", "whsec_")
_TRIGGER = literal_gate(TRIGGER_WORDS)


def _prefilter(pattern: re.Pattern[str]) -> tuple[str, ...] | None:
    """Short words one of which any match of ``pattern`` contains (None: no such words, always run).

    Each required literal is replaced by the shortest trigger word inside it, so a pattern with 63
    literal spellings ("?token=", "&api_key="...) is checked with a handful of ``in`` tests.
    """
    literals = required_literals(pattern.pattern)
    if not literals:
        return None
    words = set()
    for lit in literals:
        inside = [w for w in TRIGGER_WORDS if w in lit]
        words.add(min(inside, key=len) if inside else lit)
    return tuple(sorted(words))


# Hand-picked words where the derived ones are weak: every match of these patterns contains the word.
_PREFILTER_OVERRIDES = {
    "url_userinfo": ("@",), "discord_webhook": ("discord",), "slack_webhook": ("hooks.slack",),
    # The secret word sits in a lookahead, which the literal extraction does not read.
    "env_assign": ("token", "secret", "pass", "key", "credential"),
    "key_header": ("key", "token", "secret", "auth", "pass", "signature"),
    "cookie": ("cookie",), "docker_auth": ("auth",),
    "stripe_key": ("_live_", "_test_", "whsec_"), "slack_token": ("xox",),
}
# Patterns gated by a cheap shape on the original-case text instead of a word.
_SHAPE_GATES = {
    "discord_token": re.compile(r"\.[A-Za-z\d_-]{6,7}\.[A-Za-z\d_-]{27}"),  # the token's middle part
    "aws_key_id": re.compile(r"A[KSGIRN][A-Z]A[A-Z0-9]{16}"),
}
_GATED_PATTERNS: list[tuple[str, re.Pattern[str], str, frozenset[str] | None]] = [
    (name, pattern, replacement,
     frozenset(words) if (words := _PREFILTER_OVERRIDES.get(name) or _prefilter(pattern)) else None)
    for name, pattern, replacement in _PATTERNS
]
_PREFILTER_WORDS = tuple(sorted({w for *_, words in _GATED_PATTERNS if words for w in words}))
_MAX_PASSES = 4

# Every regex of this module, for the linearity test and the benchmark.
ALL_PATTERNS: dict[str, re.Pattern[str]] = {
    **{name: pattern for name, pattern, _ in _PATTERNS},
    **{f"shape:{name}": pattern for name, pattern in _SHAPE_GATES.items()},
    "url": _URL, "url_signed": _URL_SIGNED, "signed_params": _SIGNED_PARAMS, "cookie_value": _COOKIE_VALUE,
    "key_begin": _KEY_BEGIN, "key_end": _KEY_END, "key_body": _KEY_BODY, "key_body_strict": _KEY_BODY_STRICT,
}


@dataclass(frozen=True)
class _Known:
    """The compiled known values; replaced whole, so a reader in another thread sees one version."""

    secrets: Mapping[str, str]  # form -> name
    names: Mapping[str, str]  # percent-normalised form -> name
    lowered: tuple[str, ...]
    exact: re.Pattern[str] | None


class Redactor:
    """Redact known secret values and secret-looking patterns from text."""

    def __init__(self, secrets: Mapping[str, str] = _EMPTY) -> None:
        self._secrets: dict[str, str] = {}
        self._known = _Known(_EMPTY, _EMPTY, (), None)
        for name, value in secrets.items():
            self._add(name, value)
        self._compile()
        self._legacy_stream: RedactStream | None = None

    def add_secret(self, name: str, value: str) -> None:
        """Also redact ``value`` (and its encoded forms) as ``«redacted:NAME»`` from now on."""
        if self._add(name, value):
            self._compile()

    @property
    def secret_names(self) -> list[str]:
        return sorted(set(self._known.secrets.values()))

    def redact(self, text: str) -> str:
        """Return ``text`` with every known secret and every secret-looking value replaced."""
        if not text:
            return text
        known = self._known
        low = fold_lower(text)
        if known.exact is not None and any(form in low for form in known.lowered):
            text = known.exact.sub(lambda m: _replace_exact(known, m), text)
            low = fold_lower(text)
        if _TRIGGER.search(low) is None and not any(g.search(text) for g in _SHAPE_GATES.values()):
            return text
        for _ in range(_MAX_PASSES):
            new = self._patterns(text, low)
            if new == text:
                break
            text = new
            low = fold_lower(text)
        return text

    def stream(self, *, mid_stream: bool = False) -> RedactStream:
        """A line-by-line redactor for one stream (one log); it hides the body lines of private keys.

        ``mid_stream``: the stream does not start at the beginning of the file, so its first lines
        may be the inside of a key block.
        """
        return RedactStream(self, mid_stream=mid_stream)

    def redact_lines(self, lines: Iterable[str], *, mid_stream: bool = False) -> list[str]:
        """Redact a window of consecutive lines, with the key-block state carried from line to line.

        With ``mid_stream`` (the window starts after the start of the file), an END line before any
        BEGIN line means the window started inside a key: the key-body lines above it are hidden too.
        """
        lines = list(lines)
        hide = _key_tail(lines) if mid_stream else None
        stream = self.stream(mid_stream=mid_stream)
        out: list[str] = []
        for i, line in enumerate(lines):
            if hide is not None and hide[0] <= i <= hide[1]:
                if i < hide[1]:
                    out.append(_mark("private-key"))
                    continue
                stream.skip_key_start()
                end = _KEY_END.search(line)
                rest = line[end.end():] if end is not None else ""
                out.append(_mark("private-key") + (stream.line(rest) if rest else ""))
                continue
            out.append(stream.line(line))
        return out

    def redact_line(self, line: str) -> str:
        """One line of *the* stream; kept for callers with one stream per Redactor (prefer ``stream``)."""
        if self._legacy_stream is None:
            self._legacy_stream = self.stream()
        return self._legacy_stream.line(line)

    # -- internals --------------------------------------------------------------------------------
    def _add(self, name: str, value: str) -> bool:
        if not value or len(value) < MIN_SECRET_LEN or not value.strip():
            return False
        changed = False
        forms = {value, quote(value), quote(value, safe=""), quote_plus(value), quote_plus(value, safe="/")}
        forms |= _base64_forms(value)
        for form in forms:
            if form not in self._secrets:
                self._secrets[form] = name
                changed = True
        return changed

    def _compile(self) -> None:
        secrets = dict(self._secrets)
        # Lower-cased forms: a cheap containment pre-check (case-insensitive, so a superset of matches).
        lowered = tuple(sorted({fold_lower(form) for form in secrets}))
        if not secrets:
            self._known = _Known(MappingProxyType(secrets), _EMPTY, lowered, None)
            return
        # Longest first so a secret containing another secret is replaced whole.
        forms = sorted(secrets, key=len, reverse=True)
        alternatives = [_percent_case_insensitive(form) for form in forms]
        names: dict[str, str] = {}
        for form in forms:
            names.setdefault(_normalise_percent(form), secrets[form])
        # Only markers with names we issue count as markers: "«redacted:<secret>»" in the input is
        # not a way to smuggle a secret past the exact pass.
        marker_names = sorted({*secrets.values(), *_PATTERN_NAMES}, key=len, reverse=True)
        marker = "«redacted(?::(?:" + "|".join(re.escape(n) for n in marker_names) + "))?»"
        exact = re.compile(f"({marker})|(?:" + "|".join(alternatives) + ")")
        self._known = _Known(MappingProxyType(secrets), MappingProxyType(names), lowered, exact)

    @staticmethod
    def _patterns(text: str, low: str, *, gated: bool = True) -> str:
        """One pass of every pattern. ``gated=False`` skips all prefilters (the reference in tests)."""
        # ``low`` stays a valid prefilter while ``text`` changes: a replacement inserts a marker and
        # never joins two pieces of the original text into a new literal.
        if not gated or "private key" in low:
            text = _redact_key_blocks(text)
        if not gated or "://" in text:
            text = _URL.sub(_signed_url, text)
        present = frozenset(w for w in _PREFILTER_WORDS if w in low)
        for name, pattern, replacement, words in _GATED_PATTERNS:
            if not gated:
                pass
            elif words is None:
                shape = _SHAPE_GATES.get(name)
                if shape is not None and shape.search(text) is None:
                    continue
            elif present.isdisjoint(words):
                continue
            if name == "cookie":
                text = pattern.sub(_cookie, text)
            else:
                text = pattern.sub(replacement, text)
        return text


class RedactStream:
    """Line-by-line redaction of one stream: the state is whether a private-key block is open."""

    def __init__(self, redactor: Redactor, *, mid_stream: bool = False) -> None:
        self._redactor = redactor
        self._in_key = False
        self._at_start = mid_stream  # before the first non-blank line of a window that starts mid-file

    def skip_key_start(self) -> None:
        """The lines hidden before this stream's first line ended a key block."""
        self._at_start = False

    def line(self, line: str) -> str:
        if self._at_start and line.strip():
            # A mid-file window whose first line looks like key body is taken to start inside a
            # key: it and the body-shaped lines after it (a short last line too) are hidden.
            self._at_start = False
            if _KEY_BODY_STRICT.fullmatch(line.strip()):
                self._in_key = True
                return _mark("private-key")
        if self._in_key:
            end = _KEY_END.search(line)
            if end is not None:
                self._in_key = False
                return _mark("private-key") + self._redactor.redact(line[end.end():])
            if _KEY_BODY.fullmatch(line):
                return _mark("private-key")
            # Not a key body line: the block was cut short; treat this line normally.
            self._in_key = False
        if "PRIVATE KEY" in line:
            begins = list(_KEY_BEGIN.finditer(line))
            if begins and _KEY_END.search(line, begins[-1].end()) is None:
                self._in_key = True
        return self._redactor.redact(line)

    def lines(self, lines: Iterable[str]) -> list[str]:
        return [self.line(line) for line in lines]


def _key_tail(lines: list[str]) -> tuple[int, int] | None:
    """The lines (first, last) of a key block whose BEGIN is before this window, or None.

    The first BEGIN/END line decides: an END first means the window holds the end of a key; the
    key-body lines right above it and the END line itself are its rest.
    """
    for i, line in enumerate(lines):
        if "PRIVATE KEY" not in line:
            continue
        end = _KEY_END.search(line)
        begin = _KEY_BEGIN.search(line)
        if end is None and begin is None:
            continue
        if end is None or (begin is not None and begin.start() < end.start()):
            return None
        start = i
        while start > 0 and _KEY_BODY.fullmatch(lines[start - 1]):
            start -= 1
        return start, i
    return None


def _redact_key_blocks(text: str) -> str:
    """Private keys inside one text: BEGIN..END whole, BEGIN to the end, body lines above a lone END."""
    out: list[str] = []
    pos = 0
    while True:
        begin = _KEY_BEGIN.search(text, pos)
        end = _KEY_END.search(text, pos)
        if end is not None and (begin is None or end.start() < begin.start()):
            # An END with no BEGIN: hide the key-body lines right above it within this text.
            parts = text[pos:end.start()].split("\n")
            keep = len(parts)
            while keep > 0 and _KEY_BODY.fullmatch(parts[keep - 1]):
                keep -= 1
            out.append("\n".join(parts[:keep]) + ("\n" if 0 < keep < len(parts) else ""))
            out.append(_mark("private-key"))
            pos = end.end()
            continue
        if begin is None:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:begin.start()])
        out.append(_mark("private-key"))
        close = _KEY_END.search(text, begin.end())
        if close is None:
            return "".join(out)
        pos = close.end()


def _replace_exact(known: _Known, match: re.Match[str]) -> str:
    if match.group(1) is not None:
        return match.group(1)  # an existing marker stays as it is
    found = match.group(0)
    name = known.secrets.get(found) or known.names.get(_normalise_percent(found), "secret")
    return _mark(name)


def _signed_url(match: re.Match[str]) -> str:
    url = match.group(0)
    if _URL_SIGNED.search(url) is None:
        return url
    return _SIGNED_PARAMS.sub(r"\1" + MARK, url)


def _cookie(match: re.Match[str]) -> str:
    """A Cookie/Set-Cookie header: every value hidden, the cookie names kept."""
    values = match.group(0)[len(match.group(1)):]
    if "=" not in values:
        return match.group(1) + MARK
    return match.group(1) + _COOKIE_VALUE.sub(r"\1" + MARK, values)


def _base64_forms(value: str) -> set[str]:
    """The parts of ``value``'s base64 encoding that appear whatever bytes precede it.

    Base64 works in 3-byte groups, so a value embedded in a longer encoded text (``user:TOKEN`` in a
    Basic header or a Docker ``auth``) is encoded in one of three alignments; each alignment has a
    middle that does not depend on the neighbouring bytes. Standard and URL-safe alphabets.
    """
    raw = value.encode("utf-8", "replace")
    forms: set[str] = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode("ascii")
        first = -(-8 * shift // 6)  # the first character made only of the value's bits
        last = (8 * (shift + len(raw))) // 6  # one past the last such character
        middle = encoded[first:last]
        if len(middle) >= MIN_BASE64_FORM:
            forms.add(middle)
            forms.add(middle.replace("+", "-").replace("/", "_"))
    return forms


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def _percent_case_insensitive(form: str) -> str:
    """Escape ``form`` for a regex, letting %2f match %2F (encoders differ in hex case)."""
    out: list[str] = []
    pos = 0
    for m in _PERCENT.finditer(form):
        out.append(re.escape(form[pos:m.start()]))
        hi, lo = m.group(1)[0], m.group(1)[1]
        out.append("%" + _case_class(hi) + _case_class(lo))
        pos = m.end()
    out.append(re.escape(form[pos:]))
    return "".join(out)


def _case_class(ch: str) -> str:
    return f"[{ch.lower()}{ch.upper()}]" if ch.isalpha() else re.escape(ch)


def _normalise_percent(form: str) -> str:
    return _PERCENT.sub(lambda m: "%" + m.group(1).upper(), form)
