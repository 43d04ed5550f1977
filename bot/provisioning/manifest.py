"""The provisioning manifest as the bot reads it: nodes, models, apt and pip entries, and the torch they imply.

Three sources, read exactly as ``deploy/provision.sh`` reads them:

* ``PROVISION_NODES``: whitespace-separated ``url[@ref][!]`` (``!`` marks a required node; the ref is
  the part after the last ``@`` of the last path segment).
* ``PROVISION_MODELS``: whitespace-separated ``dir|url[|min_bytes[|size_bytes]]``. Every model is
  required: the script fails the run when any model download fails.
* ``PROVISION_MANIFEST``: an http(s) URL (fetched by the preflight) or a path on the instance, holding
  lines ``node SPEC...``, ``model SPEC...``, ``apt PKG...``, ``pip PKG...``; ``#`` starts a comment.

``torch_need`` says which CUDA build of torch the instance will run: a ``pip`` entry that pins a
``+cuXYZ`` wheel or names a PyTorch wheel index, else an image tag naming its CUDA; ``None`` when the
image picks its CUDA per host (``vastai/comfyui:@vastai-automatic-tag``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MANIFEST_KINDS = ("node", "model", "apt", "pip")

# +cu128 local versions, /whl/cu128 indexes, and image tags such as cuda-12.8, cuda12.8.1 or cu128.
_WHEEL_CUDA = re.compile(r"(?:\+|/whl/(?:nightly/)?)cu(\d{2})(\d)\b")
_CPU_INDEX = re.compile(r"/whl/(?:nightly/)?cpu\b")
_IMAGE_CUDA = re.compile(r"(?i)(?:^|[-_:.])cuda[-_]?(\d{2})\.(\d)|(?:^|[-_:.])cu(\d{2})(\d)(?=$|[-_.])")
_TORCH_PKGS = ("torch", "torchvision", "torchaudio", "xformers")


class ManifestError(ValueError):
    """A manifest entry the script would refuse; ``problems`` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class NodeSpec:
    url: str
    ref: str | None
    required: bool

    @property
    def name(self) -> str:
        """The directory the script clones into: the last path segment without ``.git``."""
        return self.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")


@dataclass(frozen=True)
class ModelSpec:
    dir: str
    url: str
    min_bytes: int | None = None
    size_bytes: int | None = None
    required: bool = True

    @property
    def name(self) -> str:
        path = urlsplit(self.url).path
        return path.rstrip("/").rsplit("/", 1)[-1] or urlsplit(self.url).hostname or self.url


@dataclass
class Manifest:
    nodes: list[NodeSpec] = field(default_factory=list)
    models: list[ModelSpec] = field(default_factory=list)
    apt: list[str] = field(default_factory=list)
    pip: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.nodes or self.models or self.apt or self.pip)

    def extend(self, other: Manifest) -> None:
        self.nodes += other.nodes
        self.models += other.models
        self.apt += other.apt
        self.pip += other.pip


@dataclass(frozen=True)
class TorchNeed:
    """The torch build the instance will run. ``cuda`` None: chosen per host by the image."""

    cuda: tuple[int, int] | None
    source: str  # what said so, e.g. "pip torch==2.8.0+cu128" or "image tag cuda-12.8"
    cpu: bool = False  # a CPU wheel: ComfyUI would not use the GPU at all

    @property
    def cuda_text(self) -> str:
        return f"{self.cuda[0]}.{self.cuda[1]}" if self.cuda else "per host"


def parse_node(spec: str) -> NodeSpec:
    """``url[@ref][!]`` as ``install_node`` splits it."""
    required = spec.endswith("!")
    spec = spec.removesuffix("!")
    url, ref = spec, None
    head, _, tail = spec.rpartition("/")
    if "@" in tail:
        name, _, ref = tail.rpartition("@")
        url = f"{head}/{name}"
    if not re.match(r"^https?://[^/\s]+/\S+", url):
        raise ManifestError([f"node {spec!r}: want an http(s) repository URL, url[@ref][!]"])
    return NodeSpec(url=url, ref=ref or None, required=required)


def _size(text: str, what: str, spec: str) -> int | None:
    if text == "":
        return None
    if not text.isdigit():
        raise ManifestError([f"model {spec!r}: {what} must be a whole number of bytes"])
    return int(text) or None


def parse_model(spec: str) -> ModelSpec:
    """``dir|url[|min_bytes[|size_bytes]]`` as ``download_model`` splits it."""
    parts = spec.split("|")
    if len(parts) < 2 or len(parts) > 4 or not parts[0] or not parts[1]:
        raise ManifestError([f"model {spec!r}: want dir|url[|min_bytes[|size_bytes]]"])
    if not re.match(r"^https?://[^/\s]+", parts[1]):
        raise ManifestError([f"model {parts[1]!r}: want an http(s) URL"])
    min_bytes = _size(parts[2], "min_bytes", spec) if len(parts) > 2 else None
    size_bytes = _size(parts[3], "size_bytes", spec) if len(parts) > 3 else None
    return ModelSpec(dir=parts[0], url=parts[1], min_bytes=min_bytes, size_bytes=size_bytes)


def _collect(kind: str, words: list[str], into: Manifest, problems: list[str]) -> None:
    for word in words:
        try:
            if kind == "node":
                into.nodes.append(parse_node(word))
            elif kind == "model":
                into.models.append(parse_model(word))
        except ManifestError as exc:
            problems += exc.problems
    if kind == "apt":
        into.apt += words
    elif kind == "pip":
        into.pip += words


def parse_settings_lists(nodes: str | None, models: str | None) -> Manifest:
    """``PROVISION_NODES`` and ``PROVISION_MODELS``; ``ManifestError`` lists every bad entry."""
    out = Manifest()
    problems: list[str] = []
    _collect("node", (nodes or "").split(), out, problems)
    _collect("model", (models or "").split(), out, problems)
    if problems:
        raise ManifestError(problems)
    return out


def parse_manifest_text(text: str) -> Manifest:
    """The manifest file's lines; ``ManifestError`` lists every line the script would refuse."""
    out = Manifest()
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] not in MANIFEST_KINDS:
            problems.append(f"manifest line {number}: unknown kind {words[0][:20]!r} "
                            f"(want {', '.join(MANIFEST_KINDS)})")
            continue
        _collect(words[0], words[1:], out, problems)
    if problems:
        raise ManifestError(problems)
    return out


def _pip_name(word: str) -> str:
    return re.split(r"[\s<>=!~;\[@]", word.strip(), maxsplit=1)[0].lower().replace("_", "-")


def torch_need(pip_words: list[str], image: str) -> TorchNeed | None:
    """Which torch the instance will run: the manifest's pip entries win over the image's tag."""
    torch_words = [w for w in pip_words if _pip_name(w) in _TORCH_PKGS]
    for word in pip_words:
        if _CPU_INDEX.search(word) and torch_words:
            return TorchNeed(None, f"pip index {host_of(word)}{urlsplit(word).path}", cpu=True)
    for word in [*torch_words, *pip_words]:
        found = _WHEEL_CUDA.search(word)
        if found:
            shown = word if word in torch_words else host_of(word) + urlsplit(word).path
            return TorchNeed((int(found[1]), int(found[2])), f"pip {shown[:60]}")
    tag = image.rsplit("/", 1)[-1]
    tag = tag.split(":", 1)[1] if ":" in tag else ""
    found = _IMAGE_CUDA.search(tag)
    if found:
        major, minor = (found[1], found[2]) if found[1] else (found[3], found[4])
        return TorchNeed((int(major), int(minor)), f"image tag {tag[:40]}")
    return None


def host_of(url: str) -> str:
    return urlsplit(url).hostname or ""
