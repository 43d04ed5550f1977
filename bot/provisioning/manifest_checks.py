"""The manifest half of the preflight: models, custom nodes, disk and GPU/CUDA, checked before renting.

``check_manifest`` adds one check per model (``model <file>``), per node (``node <name>``), the
``manifest`` itself when it is a URL, ``disk`` and ``GPU/CUDA`` to a ``PreflightReport``. All network
probes run concurrently, each bounded by a timeout, through a ``ProbeCache`` (a few minutes per URL on
the injected clock) so that /rent, the approval request and the approval click do not probe thrice.

Severity: a failing required model or node is ``fail`` (the script would end the run on it), an optional
node's problem is ``warn``; a probe that got no answer in time is ``warn`` (not verified), never a pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from bot.provisioning.compat import DiskPlan, offer_problem
from bot.provisioning.manifest import (
    Manifest,
    ManifestError,
    ModelSpec,
    NodeSpec,
    TorchNeed,
    parse_manifest_text,
    parse_settings_lists,
    torch_need,
)
from bot.provisioning.probes import (
    HttpFacts,
    ProbeCache,
    RepoFacts,
    UrlMap,
    fingerprint,
    get_small,
    hf_gated,
    hf_repo,
    hf_token_valid,
    probe_repo,
    probe_url,
    raw_requirements_url,
    token_setting,
    torch_risks,
)
from bot.provisioning.report import PreflightReport, Status, host_path, short_url, url_secrets
from bot.settings import Settings
from bot.vast.models import Offer

DEFAULT_PROBE_TIMEOUT_S = 10.0
MAX_CONCURRENT_PROBES = 8
_TEXT_NAMES = (".json", ".yaml", ".yml", ".txt", ".html", ".htm")
T = TypeVar("T")


@dataclass
class Probing:
    """How this preflight reaches the network: one client, the cache, where origins really go."""

    http: httpx.AsyncClient
    cache: ProbeCache
    urls: UrlMap
    timeout_s: float
    tokens: dict[str, str]  # setting name -> token, only the ones that are set
    gate: asyncio.Semaphore

    def token_for(self, url: str) -> tuple[str | None, str | None]:
        setting = token_setting(url)
        return setting, self.tokens.get(setting) if setting else None

    async def cached(self, key: tuple[str, ...], make: Callable[[], Awaitable[T]], on_timeout: T) -> T:
        async def bounded() -> T:
            async with self.gate:
                # A redirect chain makes several requests: bound the whole probe, not each request.
                return await asyncio.wait_for(make(), timeout=self.timeout_s * 2)
        try:
            return await self.cache.get(key, bounded, keep=lambda value: not _timed_out(value))
        except TimeoutError:
            return on_timeout  # not cached: the next check (the approval click) asks again


def _no_answer(probing: Probing) -> tuple[int | None, bytes, str]:
    """What a fetch probe yields when it timed out (``_timed_out`` recognises it)."""
    return None, b"", f"no answer within {probing.timeout_s * 2:g}s"


def _timed_out(value: object) -> bool:
    """A probe that got no answer in time: not cached, so the next check asks again."""
    if isinstance(value, tuple) and len(value) == 3 and value[0] is None:
        return str(value[2]).startswith("no answer")
    return bool(getattr(value, "timed_out", False))


def _tokens(settings: Settings) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, secret in (("HF_TOKEN", settings.hf_token), ("CIVITAI_TOKEN", settings.civitai_token)):
        if secret is not None and secret.get_secret_value():
            out[name] = secret.get_secret_value()
    return out


def _gb(n: int) -> str:
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 else f"{n / 1024**2:.0f} MB" if n >= 1024**2 else f"{n} bytes"


# ----------------------------------------------------------------------------- the manifest


async def load_manifest(settings: Settings, probing: Probing, report: PreflightReport | None) -> Manifest:
    """Everything the script will install; problems go to ``report`` as ``manifest`` checks."""
    manifest = Manifest()
    try:
        manifest.extend(parse_settings_lists(settings.provision_nodes, settings.provision_models))
    except ManifestError as exc:
        if report is not None:
            report.add("manifest", "fail", "; ".join(exc.problems)[:300],
                       "fix PROVISION_NODES / PROVISION_MODELS (forms: url[@ref][!] and dir|url[|min[|size]])")
    source = settings.provision_manifest
    if not source:
        return manifest
    if not source.startswith(("http://", "https://")):
        if report is not None:
            report.add("manifest", "warn", f"PROVISION_MANIFEST {source[:80]} is a path on the instance: "
                       "its entries are not checked before renting", "serve it at an http(s) URL")
        return manifest
    shown = short_url(host_path(source))
    if url_secrets(source):
        if report is not None:
            report.add("manifest", "fail", f"the manifest URL carries a secret ({', '.join(url_secrets(source))})",
                       "serve it without credentials in the URL")
        return manifest
    _, token = probing.token_for(source)

    async def fetch() -> tuple[int | None, bytes, str]:
        return await get_small(probing.http, source, token=token, timeout_s=probing.timeout_s,
                               urls=probing.urls, limit=512 * 1024)

    status, body, error = await probing.cached(("manifest", source, fingerprint(token)), fetch, _no_answer(probing))
    if status != 200:
        if report is not None:
            why = error or f"HTTP {status}"
            # The script fails the whole run when it cannot fetch the manifest.
            report.add("manifest", "fail", f"{why} from {shown}", "fix PROVISION_MANIFEST")
        return manifest
    try:
        manifest.extend(parse_manifest_text(body.decode("utf-8", "replace")))
    except ManifestError as exc:
        if report is not None:
            report.add("manifest", "fail", f"{shown}: " + "; ".join(exc.problems)[:300],
                       "the script refuses these lines: fix the manifest file")
        return manifest
    if report is not None:
        report.add("manifest", "ok", f"{shown}: {len(manifest.nodes)} node(s), {len(manifest.models)} model(s)")
    return manifest


# ----------------------------------------------------------------------------- models


async def _auth_explained(spec: ModelSpec, facts: HttpFacts, probing: Probing) -> tuple[str, str]:
    """Why a model URL answered 401/403, and which token setting fixes it."""
    status = facts.status
    setting, token = probing.token_for(spec.url)
    if setting == "HF_TOKEN":
        repo = hf_repo(spec.url) or "the repository"
        page = f"https://huggingface.co/{repo}"
        if facts.error_code == "RepoNotFound":
            if token is None:
                return (f"HTTP {status}: {repo} does not exist, or is private and HF_TOKEN is not set",
                        "check the URL; for a private repo set HF_TOKEN")
            return (f"HTTP {status}: {repo} does not exist or HF_TOKEN's account cannot see it",
                    "check the URL, or use a token of an account with access")
        if token is not None:
            valid = await probing.cached(
                ("hf-whoami", fingerprint(token)),
                lambda: hf_token_valid(probing.http, token, timeout_s=probing.timeout_s, urls=probing.urls), None)
            if valid is False:
                return (f"HTTP {status}: HF_TOKEN is invalid (the Hub refuses it)",
                        "create a read token at huggingface.co/settings/tokens and set HF_TOKEN")
        gated: bool | None = facts.error_code == "GatedRepo" or await probing.cached(
            ("hf-gated", repo, fingerprint(token)),
            lambda: hf_gated(probing.http, repo, token=token, timeout_s=probing.timeout_s, urls=probing.urls), None)
        if gated:
            if token is None:
                return (f"HTTP {status}: {repo} is a gated repo and HF_TOKEN is not set",
                        f"accept the terms at {page}, then set HF_TOKEN to a read token of that account")
            return (f"HTTP {status}: {repo} is gated and HF_TOKEN's account has not accepted its terms",
                    f"open {page} with that account and accept the terms (or use another model)")
        if token is None:
            return f"HTTP {status}: the Hub wants a login and HF_TOKEN is not set", "set HF_TOKEN"
        return (f"HTTP {status}: HF_TOKEN's account has no access to {repo}",
                "use a token of an account with access (private repo?)")
    if setting == "CIVITAI_TOKEN":
        if token is None:
            return (f"HTTP {status}: Civitai wants a login for this model and CIVITAI_TOKEN is not set",
                    "create an API key at civitai.com/user/account and set CIVITAI_TOKEN")
        if status == 401:
            return (f"HTTP {status}: CIVITAI_TOKEN is refused (invalid or expired)",
                    "create a new API key at civitai.com/user/account and set CIVITAI_TOKEN")
        return (f"HTTP {status}: CIVITAI_TOKEN's account may not download this model (early access?)",
                "check the model page with that account, or pick another version")
    return (f"HTTP {status} from {facts.final_host or 'the host'}: it wants credentials the bot does not "
            "send (HF_TOKEN goes only to huggingface.co, CIVITAI_TOKEN only to civitai.com)",
            "use a public URL for this model")


async def _check_model(spec: ModelSpec, probing: Probing) -> tuple[str, Status, str, str, int | None]:
    """(name, status, detail, fix, size in bytes or None) for one model."""
    name = f"model {spec.name[:60]}"
    bad: Status = "fail" if spec.required else "warn"
    shown = short_url(host_path(spec.url))
    secrets = url_secrets(spec.url)
    if secrets:
        setting = token_setting(spec.url)
        fix = f"remove it from the URL and set {setting}" if setting else "use a URL without credentials"
        return name, bad, f"the URL carries a secret ({', '.join(secrets)}); it would show in logs", fix, None
    _, token = probing.token_for(spec.url)
    facts = await probing.cached(
        ("model", spec.url, fingerprint(token)),
        lambda: probe_url(probing.http, spec.url, token=token, timeout_s=probing.timeout_s, urls=probing.urls),
        HttpFacts(None, error=f"no answer within {probing.timeout_s * 2:g}s", timed_out=True))
    size = facts.size or spec.size_bytes
    where = "PROVISION_MODELS or the manifest"
    if facts.status is None:
        if facts.timed_out:
            return name, "warn", f"{shown}: {facts.error} (not verified)", "check the URL opens from here", size
        return name, bad, f"{shown}: {facts.error}", f"fix the URL in {where}", size
    if facts.status in (401, 403):
        detail, fix = await _auth_explained(spec, facts, probing)
        return name, bad, detail, fix, size
    if facts.status == 404 or facts.status == 410:
        what = " (the repo has no such file)" if facts.error_code == "EntryNotFound" else ""
        if facts.error_code == "RevisionNotFound":
            what = " (no such revision)"
        return name, bad, f"HTTP {facts.status}{what}: {shown}", f"fix the URL in {where}", size
    if facts.status == 429 or facts.status >= 500:
        return name, "warn", f"HTTP {facts.status} from {shown} (not verified)", "try again later", size
    if facts.status not in (200, 206):
        return name, bad, f"HTTP {facts.status} from {shown}", f"fix the URL in {where}", size
    if facts.content_type in ("text/html", "application/json") and not spec.name.lower().endswith(_TEXT_NAMES):
        return (name, bad, f"{shown} serves {facts.content_type}, not a model file", "use the file's download URL",
                size)
    if size is not None and spec.min_bytes is not None and size < spec.min_bytes:
        return name, bad, f"{shown} is {size} bytes, below its min_bytes {spec.min_bytes}", "fix the URL", size
    via = f" via {facts.final_host}" if facts.final_host and facts.final_host not in shown else ""
    sized = _gb(size) if size else "size unknown"
    return name, "ok", f"{sized} at {shown.split('/', 1)[0]}{via}", "", size


# ----------------------------------------------------------------------------- nodes


async def _check_node(spec: NodeSpec, probing: Probing) -> tuple[str, Status, str, str]:
    name = f"node {spec.name[:60]}"
    bad: Status = "fail" if spec.required else "warn"
    role = "required" if spec.required else "optional"
    shown = short_url(host_path(spec.url))
    if url_secrets(spec.url):
        return name, bad, "the repository URL carries credentials", "use a public repository URL"
    repo = await probing.cached(
        ("repo", spec.url),
        lambda: probe_repo(probing.http, spec.url, timeout_s=probing.timeout_s, urls=probing.urls),
        RepoFacts(None, error=f"no answer within {probing.timeout_s * 2:g}s", timed_out=True))
    if repo.status is None:
        status: Status = "warn" if repo.timed_out else bad
        return name, status, f"{shown}: {repo.error}", "check the URL opens from here"
    if repo.status in (401, 403, 404, 410):
        return (name, bad, f"{role} repository {shown} does not exist or is private (HTTP {repo.status})",
                "fix its URL in PROVISION_NODES or the manifest (the instance clones without credentials)")
    if repo.status != 200 or not repo.smart:
        return name, "warn", f"{shown} answered HTTP {repo.status} but no git refs (not verified)", \
            "check it is a git repository URL"
    commit = repo.resolve(spec.ref)
    pinned = f"@{spec.ref}" if spec.ref else "default branch"
    if commit is None:
        if spec.ref and all(c in "0123456789abcdefABCDEF" for c in spec.ref) and len(spec.ref) >= 7:
            commit = spec.ref  # a commit below the branch tips: only the clone can confirm it
            pinned = f"commit {spec.ref[:12]} (not a branch tip; the clone confirms it)"
        else:
            return (name, bad, f"{shown} has no branch or tag {spec.ref or 'HEAD'}",
                    "fix the @ref in PROVISION_NODES or the manifest")
    req_url = raw_requirements_url(spec.url, commit or "HEAD")

    async def fetch() -> tuple[int | None, bytes, str]:
        return await get_small(probing.http, req_url, token=None, timeout_s=probing.timeout_s, urls=probing.urls)

    status_code, body, error = await probing.cached(("reqs", req_url), fetch, _no_answer(probing))
    if status_code == 404:
        return name, "ok", f"{pinned} exists; no requirements.txt", ""
    if status_code != 200:
        why = error or f"HTTP {status_code}"
        return name, "warn", f"{pinned} exists; requirements.txt not read ({why})", ""
    risks = torch_risks(body.decode("utf-8", "replace"))
    if risks:
        return (name, bad, f"requirements.txt {risks[0]}: it replaces the CUDA torch and ComfyUI cannot start",
                f"pin the node to a ref without it, or drop the {role} node")
    return name, "ok", f"{pinned} exists; requirements.txt leaves torch alone", ""


# ----------------------------------------------------------------------------- disk and GPU


def _check_disk(report: PreflightReport, plan: DiskPlan, disk_gb: int, from_request: bool,
                offer: Offer | None) -> None:
    where = f"the request's disk {disk_gb} GB" if from_request else f"DISK_GB={disk_gb}"
    if offer is not None and offer.disk_space is not None and offer.disk_space + 1e-9 < plan.need_gb:
        report.add("disk", "fail", f"{plan.breakdown()}; this host offers only {offer.disk_space:.0f} GB",
                   f"pick an offer with at least {plan.need_gb} GB of disk")
    elif plan.need_gb > disk_gb:
        report.add("disk", "fail", f"{plan.breakdown()} > {where}",
                   f"set DISK_GB={plan.need_gb} (or /rent disk:{plan.need_gb})")
    else:
        report.add("disk", "ok", f"{plan.breakdown()} ≤ {where}")


def _cc_text(offer: Offer) -> str:
    cap = offer.compute_cap
    if not cap:
        return "sm_?"
    return f"sm_{cap // 10 if cap >= 100 else cap}"


def _check_gpu(report: PreflightReport, need: TorchNeed | None, offer: Offer | None) -> None:
    if need is not None and need.cpu:
        report.add("GPU/CUDA", "fail", f"{need.source} installs a CPU torch: ComfyUI would not use the GPU",
                   "drop the CPU index from the manifest's pip lines")
        return
    if offer is None:
        if need is not None and need.cuda is not None:
            report.add("GPU/CUDA", "ok", f"torch for CUDA {need.cuda_text} ({need.source}); "
                       "offers that cannot run it are hidden")
        return
    host = (f"{offer.gpu_name or '?'} {_cc_text(offer)}, driver {offer.driver_version or '?'} "
            f"(CUDA ≤ {offer.cuda_max_good or '?'})")
    problem = offer_problem(offer, need)
    wants = f"CUDA {need.cuda_text} ({need.source})" if need is not None else "the image's per-host CUDA"
    if problem is not None:
        report.add("GPU/CUDA", "fail", f"{host}: {problem}", "pick another offer")
    else:
        report.add("GPU/CUDA", "ok", f"{host} runs {wants}")


# ----------------------------------------------------------------------------- all of it


async def check_manifest(settings: Settings, report: PreflightReport, *, http: httpx.AsyncClient,
                         cache: ProbeCache, urls: UrlMap | None = None,
                         timeout_s: float = DEFAULT_PROBE_TIMEOUT_S, offer: Offer | None = None,
                         disk_gb: int | None = None) -> None:
    """Add the manifest's checks to ``report`` (for ``offer`` and ``disk_gb`` when given)."""
    probing = Probing(http=http, cache=cache, urls=urls or UrlMap(), timeout_s=timeout_s,
                      tokens=_tokens(settings), gate=asyncio.Semaphore(MAX_CONCURRENT_PROBES))
    manifest = await load_manifest(settings, probing, report)
    if manifest.empty and offer is None:
        return
    models, nodes = await asyncio.gather(
        asyncio.gather(*(_check_model(m, probing) for m in manifest.models)),
        asyncio.gather(*(_check_node(n, probing) for n in manifest.nodes)),
    )
    sizes: list[int | None] = []
    for name, status, detail, fix, size in models:
        report.add(name, status, detail, fix)
        sizes.append(size)
    for name, status, detail, fix in nodes:
        report.add(name, status, detail, fix)
    plan = DiskPlan(models_bytes=sum(s for s in sizes if s), models_unknown=sum(1 for s in sizes if not s),
                    nodes=len(manifest.nodes))
    _check_disk(report, plan, disk_gb or settings.disk_gb, disk_gb is not None, offer)
    _check_gpu(report, torch_need(manifest.pip, settings.docker_image), offer)


async def manifest_torch_need(settings: Settings, *, http: httpx.AsyncClient, cache: ProbeCache,
                              urls: UrlMap | None = None,
                              timeout_s: float = DEFAULT_PROBE_TIMEOUT_S) -> TorchNeed | None:
    """The torch the configured manifest implies (fetching ``PROVISION_MANIFEST`` through the cache)."""
    probing = Probing(http=http, cache=cache, urls=urls or UrlMap(), timeout_s=timeout_s,
                      tokens=_tokens(settings), gate=asyncio.Semaphore(MAX_CONCURRENT_PROBES))
    manifest = await load_manifest(settings, probing, None)
    return torch_need(manifest.pip, settings.docker_image)


async def manifest_disk_plan(settings: Settings, *, http: httpx.AsyncClient, cache: ProbeCache,
                             urls: UrlMap | None = None,
                             timeout_s: float = DEFAULT_PROBE_TIMEOUT_S) -> DiskPlan | None:
    """What the configured manifest needs on disk (sizes probed through the cache); None without models."""
    probing = Probing(http=http, cache=cache, urls=urls or UrlMap(), timeout_s=timeout_s,
                      tokens=_tokens(settings), gate=asyncio.Semaphore(MAX_CONCURRENT_PROBES))
    manifest = await load_manifest(settings, probing, None)
    if not manifest.models:
        return None
    sizes = [r[4] for r in await asyncio.gather(*(_check_model(m, probing) for m in manifest.models))]
    return DiskPlan(models_bytes=sum(s for s in sizes if s), models_unknown=sum(1 for s in sizes if not s),
                    nodes=len(manifest.nodes))
