"""Classifier: the rule file's validity, every rule reachable, ordering, the unknown fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.watch.classifier import (
    UNKNOWN_INFO_RULE_ID,
    UNKNOWN_RULE_ID,
    Classifier,
    Rule,
    RuleError,
    load_rules,
    looks_like_error,
    required_literals,
)
from bot.watch.model import Category, Severity

RULES = load_rules()
CLASSIFIER = Classifier(RULES)

# One realistic line per rule (shapes from the reference §2): each must hit exactly its own rule,
# which also proves no rule is shadowed by an earlier one.
EXAMPLES: dict[str, str] = {
    "noise.port_forwarding": "Error: remote port forwarding failed for listen port 34656",
    "noise.cloudflared_ping_group": "2026-02-05T10:04:33Z WRN The user running cloudflared process has a GID "
                                    "(group ID) that is not within ping_group_range.",
    "noise.cloudflared_icmp": 'WRN ICMP proxy feature is disabled error="cannot create ICMPv4 proxy: Group ID 0 is not '
                              'between ping group 1 to 0"',
    "noise.cloudflared_config_path": "2026-02-05T10:04:32Z WRN Cannot determine default configuration path. No file "
                                     "[config.yml config.yaml] in [~/.cloudflared]",
    "noise.supervisor_root": "2026-02-05 10:00:41,120 CRIT Supervisor is running as root.  Privileges were not dropped",
    "noise.comfyui_paused": "comfyui startup paused until instance provisioning has completed (/.provisioning present)",
    "noise.waiting_portal_yaml": "Waiting for /etc/portal.yaml before starting instance_portal...",
    "noise.skipping_service": "Skipping syncthing startup (not in /etc/portal.yaml)",
    "noise.pip_root": "WARNING: Running pip as the 'root' user can result in broken permissions and conflicting "
                      "behaviour",
    "noise.pip_release": "[notice] A new release of pip is available: 24.3.1 -> 25.0",
    "noise.debconf": "debconf: delaying package configuration, since apt-utils is not installed",
    "noise.apt_cli": "WARNING: apt does not have a stable CLI interface. Use with caution in scripts.",
    "noise.deprecation": "/venv/main/lib/python3.12/site-packages/torch/nn/utils/weight_norm.py:143: FutureWarning: "
                         "`torch.nn.utils.weight_norm` is deprecated",
    "noise.manager_fetch": "FETCH ComfyRegistry Data: 15/96",
    "noise.ssh_boot": "kex_exchange_identification: read: Connection reset by peer",
    "noise.supervisor_http_auth": "2026-02-05 10:00:41,121 CRIT Server 'unix_http_server' running without any HTTP "
                                  "authentication checking",
    "noise.jupyter_browser": "[W 2026-02-05 10:00:44.530 ServerApp] No web browser found: Error('could not locate "
                             "runnable browser').",
    "noise.cloudflared_origin_cert": "2026-02-05T10:00:45Z ERR Cannot determine default origin certificate path. No "
                                     "file cert.pem in [~/.cloudflared ~/.cloudflare-warp]",
    "noise.triton_missing": "A matching Triton is not available, some optimizations will not be enabled",
    "noise.resolver_warning": "ERROR: pip's dependency resolver does not currently take into account all the "
                              "packages that are installed.",
    "disk.no_space": "OSError: [Errno 28] No space left on device",
    "disk.curl_write": "curl: (23) Failure writing output to destination",
    "disk.not_enough_free": "E: You don't have enough free space in /var/cache/apt/archives/.",
    "disk.below_recommended": "WARNING: Your allocated disk size (40GB) is below the recommended 80GB - Some models "
                              "will not be downloaded",
    "gpu.oom": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
               "23.55 GiB",
    "gpu.no_kernel_image": "RuntimeError: CUDA error: no kernel image is available for execution on the device",
    "gpu.arch_incompatible": "UserWarning: NVIDIA GeForce RTX 5090 with CUDA capability sm_120 is not compatible with "
                             "the current PyTorch installation.",
    "gpu.driver_too_old": "RuntimeError: The NVIDIA driver on your system is too old (found version 12020).",
    "gpu.no_driver": "Failed to initialize NVML: Unknown Error",
    "gpu.torch_no_cuda": "AssertionError: Torch not compiled with CUDA enabled",
    "gpu.toolkit_fallback": "Warning: Driver reports CUDA 12.4 but no compatible toolkit found; using 12.8",
    "missing.script_body_404": "/provisioning.sh: line 1: 404:: command not found",
    "missing.script_saved_tiny": "2026-02-05 10:01:03 [INFO] Script saved to /provisioning.sh (14 bytes)",
    "missing.curl_404": "curl: (22) The requested URL returned error: 404",
    "missing.http_404": "2026-02-05 10:03:01 ERROR 404: Not Found.",
    "missing.onstart": "bash: /root/onstart.sh: No such file or directory",
    "missing.update_lock": "Refusing to provision container with /workspace.update_lock present",
    "auth.token_invalid": "[WARNING] HuggingFace token validation failed: HTTP Error 401: Unauthorized",
    "auth.gated_repo": "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-67a3)",
    "auth.repo_not_found": "huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. Repository Not Found for "
                           "url: https://huggingface.co/api/models/x/y",
    "auth.http_401_403": "HTTP request sent, awaiting response... 401 Unauthorized",
    "auth.civitai_login": '{"error":"Unauthorized","message":"The creator of this asset requires you to be logged in '
                          'to download it"}',
    "auth.git_username": "fatal: could not read Username for 'https://github.com': No such device or address",
    "config.portal_config": "Error: not enough values to unpack (expected 5, got 4)",
    "config.portal_port": "Error: invalid literal for int() with base 10: '8l88'",
    "config.image_pull": "Error response from daemon: manifest for vastai/comfyui:nope not found: manifest unknown",
    "config.ssh_key": "root@142.170.89.112: Permission denied (publickey).",
    "config.manifest": "[ERROR] Failed to load manifest: while parsing a block mapping",
    "config.port_in_use": "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8188): "
                          "address already in use",
    "prompt.missing_model": "  - Value not in list: ckpt_name: 'sd_xl_base_1.0.safetensors' not in []",
    "prompt.bad_model_file": "safetensors_rust.SafetensorError: Error while deserializing header: HeaderTooLarge",
    "depfatal.torch_replaced": "    Successfully uninstalled torch-2.8.0+cu128",
    "depfatal.torch_cpu_wheel": "Successfully installed sympy-1.13.1 torch-2.5.1+cpu",
    "depfatal.supervisor_fatal": "INFO gave up: comfyui entered FATAL state, too many start retries too quickly",
    "depfatal.comfyui_exited": "2026-02-05 10:05:12,001 INFO exited: comfyui (exit status 1; not expected)",
    "depfatal.comfy_module": "ModuleNotFoundError: No module named 'comfyui_frontend_package'",
    "depfatal.numpy_abi": "A module that was compiled using NumPy 1.x cannot be run in NumPy 2.1.3 as it may crash.",
    "depfatal.torchvision_abi": "RuntimeError: operator torchvision::nms does not exist",
    "depfatal.apt": "E: Unable to locate package libfoo-dev",
    "dep.no_version": "ERROR: No matching distribution found for onnxruntime-gpu==1.15.1",
    "dep.resolution": "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-"
                      "resolution/",
    "dep.wheel_build": "  ERROR: Failed building wheel for insightface",
    "dep.pip_subprocess": "  error: subprocess-exited-with-error",
    "dep.import_failed": "   0.1 seconds (IMPORT FAILED): /workspace/ComfyUI/custom_nodes/ComfyUI-ReActor",
    "dep.node_repo_missing": "fatal: repository 'https://github.com/someone/ComfyUI-Gone/' not found",
    "dep.module_missing": "ModuleNotFoundError: No module named 'insightface'",
    "dep.shared_lib": "ImportError: libGL.so.1: cannot open shared object file: No such file or directory",
    "dep.pip_oserror": "ERROR: Could not install packages due to an OSError: [('/tmp/x', 'Permission denied')]",
    "net.curl": "curl: (28) Operation timed out after 30001 milliseconds with 0 bytes received",
    "net.resolve": "fatal: unable to access 'https://github.com/org/repo/': Could not resolve host: github.com",
    "net.reset": "requests.exceptions.ConnectionError: ('Connection aborted.', ConnectionResetError(104, "
                 "'Connection reset by peer'))",
    "net.git": "error: RPC failed; curl 92 HTTP/2 stream 0 was not closed cleanly: CANCEL (err 8)",
    "net.rate_limit": "requests.exceptions.HTTPError: 502 Server Error: Bad Gateway for url: https://huggingface.co/x",
    "net.pip_retry": "WARNING: Retrying (Retry(total=4, connect=None, read=None)) after connection broken by "
                     "'ProtocolError'",
    "net.hf_xet": "RuntimeError: Data processing error: CAS service error : Reqwest Error",
    "net.tunnel": "ERR Error unmarshaling QuickTunnel response: error code: 1015",
    "net.download_retry": "[WARNING] Download error on attempt 2: <urlopen error timed out>",
    "prompt.exception": "!!! Exception during processing !!! 'NoneType' object has no attribute 'shape'",
    "consequence.script_failed": "2026-02-05 10:01:20 [ERROR] Provisioning script failed (exit 1)",
    "consequence.attempt_failed": "[WARNING] Attempt 1/3 failed, retrying in 30s...",
    "consequence.attempts_exhausted": "[ERROR] All 3 attempts exhausted",
    "consequence.on_failure": "[INFO] on_failure=continue: returning exit code 1",
    "consequence.encountered_issues": "Note: Provisioning encountered issues but instance startup will continue",
    "consequence.run_done_fail": '@@prov {"v":1,"run":"r","att":1,"seq":9,"ev":"run.done","st":"fail","step":"pip"',
    "consequence.failed_marker": "touch /.provisioning_failed",
    "missing.script_download_failed": "[ERROR] Failed to download provisioning script: <urlopen error unknown url>",
}


def test_packaged_rules_load_and_use_only_the_vocabulary() -> None:
    assert len(RULES) >= 60
    for rule in RULES:
        assert isinstance(rule.category, Category)
        assert isinstance(rule.severity, Severity)
        assert rule.advice and len(rule.advice) < 300
    # Every log category has rules; stalled and ssh_unreachable are the engine's own.
    assert {r.category for r in RULES} == set(Category) - {Category.STALLED, Category.SSH_UNREACHABLE}


def test_noise_rules_come_first() -> None:
    kinds = [r.category == Category.PLATFORM_NOISE for r in RULES]
    first_other = kinds.index(False)
    assert all(kinds[:first_other]) and not any(kinds[first_other:])


def test_every_rule_has_an_example_that_reaches_it() -> None:
    assert set(EXAMPLES) == {r.id for r in RULES}
    for rule in RULES:
        matched = CLASSIFIER.match_rule(EXAMPLES[rule.id])
        assert matched is not None and matched.id == rule.id, (rule.id, matched and matched.id)
        got = CLASSIFIER.classify_line(EXAMPLES[rule.id])
        assert got is not None
        assert (got.category, got.severity, got.stops_run, got.consequence) == (
            rule.category, rule.severity, rule.stops_run, rule.consequence)


def test_all_packaged_rules_are_gated() -> None:
    assert CLASSIFIER.ungated_rules == ()


@pytest.mark.parametrize(("line", "category", "severity", "stops"), [
    # noise first even though these lines carry Error / CRIT / WRN / ERR
    ("Error: remote port forwarding failed for listen port 34656", Category.PLATFORM_NOISE, Severity.INFO, False),
    ("2026-02-05 CRIT Supervisor is running as root.", Category.PLATFORM_NOISE, Severity.INFO, False),
    # disk wins over dependency and network when both could apply
    ("ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
     Category.DISK_FULL, Severity.FATAL, True),
    ("Cannot write to ‘flux1-dev.safetensors’ (No space left on device).", Category.DISK_FULL, Severity.FATAL, True),
    ("fatal: write error: No space left on device", Category.DISK_FULL, Severity.FATAL, True),
    ("UserWarning: Not enough free disk space to download the file. The expected file size is: 23802.93 MB.",
     Category.DISK_FULL, Severity.FATAL, True),
    # OOM is a workload problem, not a reason to destroy
    ("torch.cuda.OutOfMemoryError: CUDA out of memory.", Category.GPU, Severity.WARN, False),
    ("CUDA driver version is insufficient for CUDA runtime version", Category.GPU, Severity.FATAL, True),
    # a 404 on a download is an error; only the provisioning script's own 404 stops the run
    ("wget: ERROR 404: Not Found.", Category.CONFIG, Severity.ERROR, False),
    ("[ERROR] Failed to download provisioning script: Failed to download script from https://x/provision.sh: "
     "HTTP Error 404: Not Found", Category.SCRIPT_MISSING, Severity.FATAL, True),
    ("curl: (22) The requested URL returned error: 403", Category.AUTH, Severity.ERROR, False),
    ("huggingface_hub.errors.HfHubHTTPError: 429 Client Error: Too Many Requests for url", Category.NETWORK,
     Severity.WARN, False),
    ("curl: (6) Could not resolve host: raw.githubusercontent.com", Category.NETWORK, Severity.WARN, False),
    ("curl: (7) Failed to connect to huggingface.co port 443 after 130 ms: Connection refused", Category.NETWORK,
     Severity.WARN, False),
    ("Cannot import /workspace/ComfyUI/custom_nodes/ComfyUI-ReActor module for custom nodes: No module named "
     "'comfy_extras_x'", Category.DEPENDENCY, Severity.WARN, False),
    ("ModuleNotFoundError: No module named 'comfy.model_management'", Category.DEPENDENCY_FATAL, Severity.FATAL, True),
    ("  × No solution found when resolving dependencies:", Category.DEPENDENCY, Severity.ERROR, False),
    ("Failed to create default tunnel for ComfyUI (http://localhost:8188): timeout", Category.NETWORK,
     Severity.WARN, False),
])
def test_rule_families_and_order(line: str, category: Category, severity: Severity, stops: bool) -> None:
    got = CLASSIFIER.classify_line(line)
    assert got is not None
    assert (got.category, got.severity, got.stops_run) == (category, severity, stops)


def test_consequence_lines_are_marked() -> None:
    for line in ("[ERROR] Provisioning script failed (exit 1)", "[WARNING] Attempt 2/3 failed, retrying in 30s...",
                 "[ERROR] All 3 attempts exhausted"):
        got = CLASSIFIER.classify_line(line)
        assert got is not None and got.consequence and not got.stops_run


@pytest.mark.parametrize("line", [
    "ValueError: invalid literal",
    "RuntimeError: something odd happened",
    "huggingface_hub.errors.LocalEntryNotFoundError: cannot find the requested files",
    "2025-02-22T22:23:17.371895 - KeyError: 'model'",
    "2026-02-05 10:00:00 [ERROR] step went sideways",
    "02/05 10:22:11 [ERROR] CUID#7 - Download aborted.",
    "FATAL: cannot continue",
    "fatal: not a git repository",
    "error: pathspec 'v2' did not match any file(s) known to git",
    "Error: something",
    "E: Sub-process /usr/bin/dpkg returned an error code (1)",
    "Segmentation fault (core dumped)",
    "/provisioning.sh: line 45:  1234 Killed                  pip install -r requirements.txt",
    "/provisioning.sh: line 33: hf: command not found",
    "subprocess.CalledProcessError: Command '['git', 'pull']' returned non-zero exit status 128.",
    "INFO exited: jupyter (exit status 2; not expected)",
    "HTTP request sent, awaiting response... 410 Gone",
    "< HTTP/2 410",
])
def test_failure_shaped_unknown_lines_are_warnings(line: str) -> None:
    got = CLASSIFIER.classify_line(line)
    assert got is not None
    assert got.rule_id == UNKNOWN_RULE_ID and got.unknown
    assert (got.category, got.severity, got.stops_run) == (Category.UNKNOWN, Severity.WARN, False)
    assert got.to_finding(line, 7).text == line and got.to_finding(line, 7).line == 7


@pytest.mark.parametrize("line", [
    "Traceback (most recent call last):",
    "ERROR something",
    "Exception in thread Thread-1:",
    "Job failed after 3 tries",
    "[E] boom",
])
def test_wordy_unknown_lines_are_info(line: str) -> None:
    got = CLASSIFIER.classify_line(line)
    assert got is not None and got.unknown and got.rule_id == UNKNOWN_INFO_RULE_ID
    assert (got.category, got.severity, got.stops_run) == (Category.UNKNOWN, Severity.INFO, False)


@pytest.mark.parametrize("line", [
    '{"level":"error","ts":1738749601.2,"logger":"http.log.error","msg":"dial tcp 127.0.0.1:18188: connect: '
    'connection refused","status":502}',
    "[W 2026-02-05 10:05:01.123 ServerApp] 404 GET /api/kernels/abc (127.0.0.1) 1.20ms",
    "(ERR):error occurred.",
    "Error. No naistyles.csv found. Put your naistyles.csv in the custom_nodes/ComfyUI_NAI-mod/CSV directory.",
    "[C 2026-02-05 10:00:44.531 ServerApp] ",
    "warning: redirecting to https://github.com/ltdrdata/ComfyUI-Manager.git/",
    "2026-02-05 10:00:43,100 INFO exited: sshd (exit status 0; expected)",
])
def test_harmless_lines_with_scary_words_are_never_warnings(line: str) -> None:
    got = CLASSIFIER.classify_line(line)
    assert got is None or got.severity == Severity.INFO


@pytest.mark.parametrize("line", [
    "+ trap 'echo \"[ERROR] Provisioning failed at line $LINENO\" >&2' ERR",
    "++ echo 'ERROR: No space left on device is checked below'",
    "+ curl -L -o /workspace/x.safetensors https://example.com/x || echo 'Failed to download script'",
])
def test_set_x_trace_lines_are_commands_not_results(line: str) -> None:
    assert CLASSIFIER.classify_line(line) is None


def test_uv_package_lines_are_not_trace_lines() -> None:
    got = CLASSIFIER.classify_line(" - torch==2.5.1+cu124")
    assert got is not None and got.category == Category.DEPENDENCY_FATAL


@pytest.mark.parametrize("line", [
    "",
    "Requirement already satisfied: numpy in /venv/main/lib/python3.12/site-packages (1.26.4)",
    "Collecting insightface==0.7.3",
    "Cloning into '/workspace/ComfyUI/custom_nodes/ComfyUI-Manager'...",
    "Ran 120 tests: 0 errors, 0 failures",
    "no errors found",
    "errors=0 failed=0",
    "ErrorLog /var/log/apache2/error_log",
    "nginx: error_log /var/log/nginx/error.log",
    "comfy --on-error continue",
    "git config --global advice.detachedHead false",
    "CFLAGS=-Werror=format-security",
    "[INFO] Provisioning complete!",
    "To see the GUI go to: http://127.0.0.1:18188",
    "@@prov {\"v\":1,\"ev\":\"heartbeat\"}",
])
def test_ordinary_lines_are_none(line: str) -> None:
    assert CLASSIFIER.classify_line(line) is None


def test_looks_like_error_helper() -> None:
    assert looks_like_error("Traceback (most recent call last):")
    assert not looks_like_error("0 errors")


def test_cache_does_not_change_answers() -> None:
    line = "OSError: [Errno 28] No space left on device"
    first = CLASSIFIER.classify_line(line)
    assert CLASSIFIER.classify_line(line) is first
    assert first is not None and first.category == Category.DISK_FULL


# -- the literal gate never changes the answer ------------------------------------------------------

def _brute_force(text: str) -> str | None:
    for rule in RULES:
        if rule.regex.search(text):
            return rule.id
    return None


_pieces = sorted({lit for r in RULES for lit in (required_literals(r.pattern) or [])})
_examples = list(EXAMPLES.values())
fragments = st.one_of(
    st.sampled_from(_pieces),
    st.sampled_from(_pieces).map(str.upper),
    st.sampled_from(_examples),
    st.sampled_from(_examples).map(lambda s: s[len(s) // 3:]),
    st.text(max_size=6),
    st.sampled_from(["K", "\u212a", "ſ", "İ", " ", "(", ")", "404", "401", "Error: ", "28"]),
)


@settings(max_examples=600, deadline=None)
@given(parts=st.lists(fragments, max_size=6))
def test_gate_agrees_with_brute_force(parts: list[str]) -> None:
    text = "".join(parts)
    rule = CLASSIFIER.match_rule(text)
    assert (rule.id if rule else None) == _brute_force(text)


def test_required_literals_examples() -> None:
    assert required_literals(r"curl: \(22\).*\b404\b") == ["curl: (22)"]
    assert required_literals(r"GatedRepoError|Cannot access gated repo") == ["cannot access gated repo",
                                                                             "gatedrepoerror"]
    assert required_literals(r".*") is None
    assert required_literals(r"a|.*") is None


def test_classifier_with_an_ungated_rule_still_works() -> None:
    rules = [Rule("any.digit", r"\d\d", Category.UNKNOWN, Severity.WARN, False, "x"), *RULES]
    classifier = Classifier(rules)
    assert classifier.ungated_rules == ("any.digit",)
    assert classifier.match_rule("abc 42").id == "any.digit"  # type: ignore[union-attr]
    assert classifier.match_rule("No space left on device").id == "disk.no_space"  # type: ignore[union-attr]


# -- validation of the rule file ----------------------------------------------------------------

GOOD = {"id": "x.one", "pattern": "boom", "category": "network", "severity": "warn", "stops_run": False,
        "advice": "Retry."}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data))
    return path


def test_valid_custom_file(tmp_path: Path) -> None:
    rules = load_rules(_write(tmp_path, [GOOD, {**GOOD, "id": "x.two", "consequence": True}]))
    assert [r.id for r in rules] == ["x.one", "x.two"]
    assert rules[1].consequence and not rules[0].consequence
    assert rules[0].regex.search("BOOM")  # case-insensitive


@pytest.mark.parametrize(("change", "message"), [
    ({"category": "network_glitch"}, "rule 'x.bad': unknown category 'network_glitch'"),
    ({"severity": "critical"}, "rule 'x.bad': unknown severity 'critical'"),
    ({"pattern": "(unclosed"}, "rule 'x.bad': invalid regex"),
    ({"stops_run": "yes"}, "rule 'x.bad': stops_run must be true or false"),
    ({"advice": ""}, "rule 'x.bad': advice must be a non-empty string"),
    ({"colour": "red"}, "rule 'x.bad': unknown key(s) colour"),
])
def test_bad_rule_is_named(tmp_path: Path, change: dict[str, object], message: str) -> None:
    with pytest.raises(RuleError) as info:
        load_rules(_write(tmp_path, [GOOD, {**GOOD, "id": "x.bad", **change}]))
    assert message in str(info.value)


def test_missing_key_duplicate_id_and_shape(tmp_path: Path) -> None:
    bad = {k: v for k, v in GOOD.items() if k != "severity"}
    with pytest.raises(RuleError, match=r"rule 'x\.one': missing severity"):
        load_rules(_write(tmp_path, [bad]))
    with pytest.raises(RuleError, match=r"rule 'x\.one': duplicate id"):
        load_rules(_write(tmp_path, [GOOD, GOOD]))
    with pytest.raises(RuleError, match="expected a list"):
        load_rules(_write(tmp_path, {"rules": []}))
    with pytest.raises(RuleError, match="rule #1 has no id"):
        load_rules(_write(tmp_path, [{"pattern": "x"}]))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(RuleError, match="not valid JSON"):
        load_rules(tmp_path / "broken.json")
    with pytest.raises(RuleError, match="cannot read rule file"):
        load_rules(tmp_path / "absent.json")
