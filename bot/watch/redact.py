"""Remove secrets from log text before it is stored, posted or printed.

Order (reference §3): first every secret value the bot knows (and its URL-encoded forms), replaced
by ``«redacted:NAME»``; then patterns as a safety net (private keys, URL credentials, token and
signature query parameters, Authorization headers, secret-named assignments and CLI flags,
passwords printed at boot, well-known token shapes, hex keys next to a key-ish word). Patterns keep
the key name and replace only the value. Git commit ids, pip ``--hash=sha256:`` values, checksums
and UUIDs stay readable: bare hex is never redacted without a key-ish word next to it.

Redaction is idempotent (markers are never matched again) and stable: ``redact`` repeats the
pattern pass until nothing changes, so redacting already-redacted text is a no-op.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import quote, quote_plus

from bot.watch.classifier import fold_lower, literal_gate, required_literals

MIN_SECRET_LEN = 6
MARK = "«redacted»"
# Names the pattern pass uses in its markers; known-value markers use the secret's own name.
_PATTERN_NAMES = ("private-key", "hf", "github", "api-key", "jwt", "discord")
# A value group must not start at a marker, so a second pass never re-matches its own output.
_NM = r"(?!«redacted)"

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _mark(name: str) -> str:
    return f"«redacted:{name}»"


# (name, compiled pattern, replacement). Replacement is a template with \1 etc. or a fixed marker.
_SECRET_WORDS = r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH_?KEY"
_PATTERNS: list[tuple[str, re.Pattern[str], str]] = [
    # A PEM block inside one text; lines of a streamed block are handled by redact_line's state.
    ("private_key", re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----|[\s\S]*)"),
     _mark("private-key")),
    ("url_userinfo", re.compile(r"(?i)\b((?:https?|git|ssh|ftp)://)" + _NM + r"[^\s/:@«]+:[^\s/@«]+@"),
     r"\1" + MARK + "@"),
    ("query_secret", re.compile(
        r"(?i)([?&;](?:token|access_token|auth_token|id_token|refresh_token|api_key|apikey|key|sig|signature"
        r"|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential"
        r"|password|passwd|secret|client_secret|policy|key-pair-id)=)" + _NM + r"[^&\s\"'<>#]+"),
     r"\1" + MARK),
    ("authorization", re.compile(
        r"(?i)(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest|bot)\s+)?)"
        + _NM + r"(?!(?:bearer|basic|token|digest|bot)\b)[^\s\"',;)]+"),
     r"\1" + MARK),
    ("bearer", re.compile(r"(?i)(\bbearer\s+)" + _NM + r"[A-Za-z0-9._~+/=-]{8,}"), r"\1" + MARK),
    ("caddy_banner", re.compile(r"(?i)(web credentials are:\s*\S+\s*/\s*)" + _NM + r"\S+"), r"\1" + MARK),
    ("caddy_token", re.compile(r"(?i)(open button token is also valid:\s*)" + _NM + r"\S+"), r"\1" + MARK),
    ("cli_flag", re.compile(
        r"(?i)(--(?:api[-_]?key|token|password|passwd|secret|hf[-_]token|access[-_]token|auth[-_]token"
        r"|civitai[-_]token|tunnel[-_]token)(?:\s*=\s*|\s+)[\"']?)" + _NM + r"[^\s\"']+"),
     r"\1" + MARK),
    ("env_assign", re.compile(
        r"(?i)(\b(?:export\s+)?(?![A-Z0-9_]*TOKENI[SZ])[A-Z0-9_]*(?:" + _SECRET_WORDS + r")[A-Z0-9_]*"
        r"[\"']?\s*[=:]\s*)(?:\"" + _NM + r"[^\"\n]*\"|'" + _NM + r"[^'\n]*'|" + _NM + r"[^\s\"',;]+)"),
     r"\1" + MARK),
    ("boot_password", re.compile(
        r"(?i)(\bpass(?:word|wd)\b\s*(?::|\bis\b)\s*[\"']?)" + _NM
        + r"(?!(?:invalid|incorrect|wrong|required|not|set|empty|missing|too|the|a|an|being|correct|unset"
        r"|none|null|expired|changed)\b)[^\s\"',;]+"),
     r"\1" + MARK),
    ("hf_token", re.compile(r"hf_[A-Za-z0-9]{30,}"), _mark("hf")),
    ("github_token", re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}"),
     _mark("github")),
    ("openai_key", re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}"),
     _mark("api-key")),
    ("jwt_like", re.compile(r"\beyJ[A-Za-z0-9_-]{15,}(?:\.[A-Za-z0-9_-]{6,}){0,2}"), _mark("jwt")),
    ("discord_webhook", re.compile(
        r"(?i)(https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/)[\w-]+"), r"\1" + MARK),
    ("discord_token", re.compile(r"(?<![\w.-])[MNO][A-Za-z\d_-]{22,27}\.[A-Za-z\d_-]{6,7}\.[A-Za-z\d_-]{27,}"),
     _mark("discord")),
    ("hex_context", re.compile(
        r"(?i)((?:api[_ -]?key|token|secret|password|civitai|vast[_ -]?key)\W{1,3})" + _NM + r"[a-f0-9]{32,64}\b"),
     r"\1" + MARK),
]

# Signed URLs (Azure SAS, S3/GCS presigned): once a URL carries a signature, its other auth
# parameters (expiry, permissions, key ids) are part of the bearer credential too.
_SIGNED_URL = re.compile(
    r"(?i)https?://[^\s\"'<>]*[?&](?:sig|signature|x-amz-signature|x-goog-signature)=[^\s\"'<>]*")
_SIGNED_PARAMS = re.compile(
    r"(?i)([?&](?:se|sp|sv|st|sr|spr|srt|ss|skoid|sktid|skt|ske|sks|skv)=)" + _NM + r"[^&\s\"'<>#]+")

# Cheap gate on the lower-cased line: a line without any of these cannot match a pattern, so most lines
# skip the regexes (a test checks the gate never changes a result). Discord bot tokens have no keyword;
# their own cheap shape is the gate.
TRIGGER_WORDS = ("token", "key", "secret", "pass", "auth", "bearer", "credential", "sig=", "signature=",
                 "policy=", "hf_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat", "sk-", "eyj", "://",
                 "civitai", "vast")
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
_PREFILTER_OVERRIDES = {"url_userinfo": ("@",), "discord_webhook": ("discord",)}
_GATED_PATTERNS: list[tuple[str, re.Pattern[str], str, frozenset[str] | None]] = [
    (name, pattern, replacement,
     frozenset(words) if (words := _PREFILTER_OVERRIDES.get(name) or _prefilter(pattern)) else None)
    for name, pattern, replacement in _PATTERNS
]
_PREFILTER_WORDS = tuple(sorted({w for *_, words in _GATED_PATTERNS if words for w in words}))
_DISCORD_SHAPE = re.compile(r"\.[A-Za-z\d_-]{6,7}\.[A-Za-z\d_-]{27}")  # the token's middle part

_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_BODY = re.compile(r"^\s*(?:[A-Za-z0-9+/=]+|Proc-Type:.*|DEK-Info:.*)?\s*$")
_MAX_PASSES = 4


class Redactor:
    """Redact known secret values and secret-looking patterns from text."""

    def __init__(self, secrets: Mapping[str, str] = _EMPTY) -> None:
        self._secrets: dict[str, str] = {}
        self._exact: re.Pattern[str] | None = None
        self._names: dict[str, str] = {}
        self._in_pem = False
        for name, value in secrets.items():
            self._add(name, value)
        self._compile()

    def add_secret(self, name: str, value: str) -> None:
        """Also redact ``value`` (and its URL-encoded forms) as ``«redacted:NAME»`` from now on."""
        if self._add(name, value):
            self._compile()

    @property
    def secret_names(self) -> list[str]:
        return sorted(set(self._secrets.values()))

    def redact(self, text: str) -> str:
        """Return ``text`` with every known secret and every secret-looking value replaced."""
        if not text:
            return text
        low = fold_lower(text)
        if self._exact is not None and any(form in low for form in self._lowered):
            text = self._exact.sub(self._replace_exact, text)
            low = fold_lower(text)
        if _TRIGGER.search(low) is None and _DISCORD_SHAPE.search(text) is None:
            return text
        for _ in range(_MAX_PASSES):
            new = self._patterns(text, low)
            if new == text:
                break
            text = new
            low = fold_lower(text)
        return text

    def redact_line(self, line: str) -> str:
        """Redact one line of a stream, also hiding the body lines of a multi-line private key."""
        if self._in_pem:
            end = _PEM_END.search(line)
            if end is not None:
                self._in_pem = False
                return _mark("private-key") + self.redact(line[end.end():])
            if _PEM_BODY.match(line):
                return _mark("private-key")
            # Not a PEM body line: the block was cut short; treat this line normally.
            self._in_pem = False
        if "PRIVATE KEY" in line:
            begin = _PEM_BEGIN.search(line)
            if begin is not None and _PEM_END.search(line, begin.end()) is None:
                self._in_pem = True
        return self.redact(line)

    # -- internals --------------------------------------------------------------------------------
    def _add(self, name: str, value: str) -> bool:
        if not value or len(value) < MIN_SECRET_LEN or not value.strip():
            return False
        changed = False
        for form in {value, quote(value), quote(value, safe=""), quote_plus(value), quote_plus(value, safe="/")}:
            if form not in self._secrets:
                self._secrets[form] = name
                changed = True
        return changed

    def _compile(self) -> None:
        # Lower-cased forms: a cheap containment pre-check (case-insensitive, so a superset of matches).
        self._lowered = tuple(sorted({fold_lower(form) for form in self._secrets}))
        if not self._secrets:
            self._exact = None
            return
        # Longest first so a secret containing another secret is replaced whole.
        forms = sorted(self._secrets, key=len, reverse=True)
        alternatives = [_percent_case_insensitive(form) for form in forms]
        self._names = {}
        for form in forms:
            self._names.setdefault(_normalise_percent(form), self._secrets[form])
        # Only markers with names we issue count as markers: "«redacted:<secret>»" in the input is
        # not a way to smuggle a secret past the exact pass.
        names = sorted({*self._secrets.values(), *_PATTERN_NAMES}, key=len, reverse=True)
        marker = "«redacted(?::(?:" + "|".join(re.escape(n) for n in names) + "))?»"
        self._exact = re.compile(f"({marker})|(?:" + "|".join(alternatives) + ")")

    def _replace_exact(self, match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return match.group(1)  # an existing marker stays as it is
        found = match.group(0)
        name = self._secrets.get(found) or self._names.get(_normalise_percent(found), "secret")
        return _mark(name)

    @staticmethod
    def _patterns(text: str, low: str, *, gated: bool = True) -> str:
        """One pass of every pattern. ``gated=False`` skips all prefilters (the reference in tests)."""
        # ``low`` stays a valid prefilter while ``text`` changes: a replacement inserts a marker and
        # never joins two pieces of the original text into a new literal.
        if (not gated or "://" in text) and _SIGNED_URL.search(text):
            text = _SIGNED_URL.sub(lambda m: _SIGNED_PARAMS.sub(r"\1" + MARK, m.group(0)), text)
        present = frozenset(w for w in _PREFILTER_WORDS if w in low)
        for name, pattern, replacement, words in _GATED_PATTERNS:
            if not gated:
                pass
            elif words is None:
                # Only the Discord token has no word to look for; its middle part is its gate.
                if name == "discord_token" and _DISCORD_SHAPE.search(text) is None:
                    continue
            elif present.isdisjoint(words):
                continue
            text = pattern.sub(replacement, text)
        return text


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def _percent_case_insensitive(form: str) -> str:
    """Escape ``form`` for a regex, letting %2f match %2F (encoders differ in hex case)."""
    out: list[str] = []
    pos = 0
    for m in _PERCENT.finditer(form):
        out.append(re.escape(form[pos:m.start()]))
        hi, lo = m.group(1)
        out.append("%" + _case_class(hi) + _case_class(lo))
        pos = m.end()
    out.append(re.escape(form[pos:]))
    return "".join(out)


def _case_class(ch: str) -> str:
    return f"[{ch.lower()}{ch.upper()}]" if ch.isalpha() else re.escape(ch)


def _normalise_percent(form: str) -> str:
    return _PERCENT.sub(lambda m: "%" + m.group(1).upper(), form)
