"""Stub `curl`, `git`, `pip`, `python`, `nvidia-smi` and `df` for running deploy/provision.sh offline.

Each stub is a small bash script whose behaviour is steered by files under ``STUB_ROOT`` and a few
``STUB_*`` environment variables; every call is recorded so tests can assert what the script did.
The script itself runs unchanged with real bash, coreutils, awk and flock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bot.provisioning.contract import EVENT_PREFIX

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "provision.sh"
BASH = shutil.which("bash") or "/bin/bash"

# curl: serves $STUB_ROOT/www/<host>/<path>; "<file>.len" overrides Content-Length for HEAD,
# "<file>.auth" holds a header the request must carry (else 401). Each call appends
# "method<TAB>url<TAB>headers joined by ~<TAB>argv" to curl.log.
CURL = r"""#!/usr/bin/env bash
argv="$*"
out="" remote=0 head=0 wfmt="" url="" hdrs=()
while (($#)); do
  case $1 in
    -o|--output) out=$2; shift ;;
    -w|--write-out) wfmt=$2; shift ;;
    -H|--header)
      if [[ $2 == @* ]]; then
        while IFS= read -r l || [[ -n $l ]]; do hdrs+=("$l"); done <"${2#@}"
      else hdrs+=("$2"); fi
      shift ;;
    --retry|--retry-delay|--max-time|--connect-timeout) shift ;;
    -O|--remote-name) remote=1 ;;
    -I|--head) head=1 ;;
    --*) ;;
    -*) [[ $1 == *I* ]] && head=1; [[ $1 == *O* ]] && remote=1 ;;
    *) url=$1 ;;
  esac
  shift
done
method=GET; ((head)) && method=HEAD
hdr_text=$(IFS='~'; echo "${hdrs[*]}")
printf '%s\t%s\t%s\t%s\n' "$method" "$url" "$hdr_text" "$argv" >>"$STUB_ROOT/curl.log"
hp=${url#*://}; hp=${hp%%\?*}
file="$STUB_ROOT/www/$hp"
code=200
if [[ ! -f $file ]]; then code=404
elif [[ -f $file.auth ]]; then
  want=$(<"$file.auth"); ok=0
  for h in "${hdrs[@]}"; do [[ $h == "$want" ]] && ok=1; done
  ((ok)) || code=401
fi
if ((code != 200)); then
  ((head)) && printf 'HTTP/1.1 %s Nope\r\n\r\n' "$code"
  echo "curl: (22) The requested URL returned error: $code" >&2
  [[ -n $wfmt ]] && printf '%s' "$code"
  exit 22
fi
if ((head)); then
  len=$(wc -c <"$file"); [[ -f $file.len ]] && len=$(<"$file.len")
  printf 'HTTP/1.1 302 Found\r\nContent-Length: 0\r\nLocation: https://cdn/x\r\n\r\n'
  printf 'HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\n' "$len"
  exit 0
fi
if [[ -n ${STUB_CURL_WAIT_FOR:-} ]]; then
  # Block until the script's log shows the awaited text (e.g. a heartbeat), at most 20 s.
  for _ in $(seq 200); do grep -q -- "$STUB_CURL_WAIT_FOR" "$PROV_LOG_PATH" 2>/dev/null && break; sleep 0.1; done
fi
if [[ -n $out ]]; then cp "$file" "$out"
elif ((remote)); then cp "$file" "./${hp##*/}"
else cat "$file"; fi
[[ -n $wfmt ]] && printf '%s' "200"
exit 0
"""

# git: "clone ... URL DEST" creates DEST/.git plus the files of $STUB_ROOT/repos/<name>;
# names in $STUB_GIT_FAIL fail like a missing repository.
GIT = r"""#!/usr/bin/env bash
echo "$*" >>"$STUB_ROOT/git.log"
[[ $1 == -C ]] && exit 0
args=("$@"); n=${#args[@]}; url=${args[n-2]}; dest=${args[n-1]}
name=${url##*/}; name=${name%.git}
for f in ${STUB_GIT_FAIL:-}; do
  if [[ $name == "$f" ]]; then echo "fatal: repository '$url/' not found" >&2; exit 128; fi
done
echo "Cloning into '$dest'..." >&2
mkdir -p "$dest/.git"
[[ -d $STUB_ROOT/repos/$name ]] && cp -r "$STUB_ROOT/repos/$name/." "$dest/"
exit 0
"""

# pip: "-r <node>/requirements.txt" fails for nodes in $STUB_PIP_FAIL; a requirements file that
# lists torch replaces the stub torch with $STUB_PIP_TORCH when set.
PIP = r"""#!/usr/bin/env bash
echo "$*" >>"$STUB_ROOT/pip.log"
req="" prev=""
for a in "$@"; do [[ $prev == -r ]] && req=$a; prev=$a; done
if [[ -n $req ]]; then
  if [[ -n ${STUB_PIP_TORCH:-} ]] && grep -q '^torch' "$req"; then
    echo "  Attempting uninstall: torch"
    echo "    Successfully uninstalled torch-2.5.1+cu124"
    echo "$STUB_PIP_TORCH 12.6 True" >"$STUB_ROOT/torch_version"
  fi
  for f in ${STUB_PIP_FAIL:-}; do
    if [[ $req == */$f/requirements.txt ]]; then
      echo "  error: subprocess-exited-with-error"
      echo "ERROR: Failed building wheel for insightface"
      exit 1
    fi
  done
fi
echo "Successfully installed stub-1.0"
"""

PYTHON = r"""#!/usr/bin/env bash
if [[ $1 == -m && $2 == pip ]]; then shift 2; exec pip "$@"; fi
if [[ $1 == -c ]]; then
  case $2 in
    *"import torch"*)
      if [[ -f $STUB_ROOT/torch_version ]]; then cat "$STUB_ROOT/torch_version"; exit 0; fi
      echo "ModuleNotFoundError: No module named 'torch'" >&2; exit 1 ;;
    *sys.version*) echo "3.11.9"; exit 0 ;;
  esac
fi
echo "stub python: unexpected arguments: $*" >&2
exit 2
"""

NVIDIA_SMI = r"""#!/usr/bin/env bash
case "$*" in
  *name,driver_version*) echo "NVIDIA GeForce RTX 4090, 550.54.14" ;;
  *compute_cap*) echo "8.9" ;;
  *) echo "| NVIDIA-SMI 550.54.14    Driver Version: 550.54.14    CUDA Version: 12.4 |" ;;
esac
"""

DF = r"""#!/usr/bin/env bash
echo "Filesystem 1024-blocks Used Available Capacity Mounted on"
echo "overlay ${STUB_DF_TOTAL_KB:-104857600} 1000 ${STUB_DF_AVAIL_KB:-83886080} 1% /"
"""

APT_GET = r"""#!/usr/bin/env bash
echo "$*" >>"$STUB_ROOT/apt-get.log"
[[ -n ${STUB_APT_FAIL:-} ]] && { echo "E: Unable to locate package $STUB_APT_FAIL" >&2; exit 100; }
echo "Setting up stub (1.0) ..."
"""

STUBS = {"curl": CURL, "apt-get": APT_GET, "git": GIT, "pip": PIP, "python": PYTHON, "python3": PYTHON,
         "nvidia-smi": NVIDIA_SMI, "df": DF}


@dataclass
class Run:
    """What one run of provision.sh left behind."""

    rc: int
    stdout: str
    stderr: str
    log_path: Path
    root: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def events(self) -> list[dict]:
        return parse_events(self.log)

    def ev(self, name: str) -> list[dict]:
        return [e for e in self.events if e["ev"] == name]

    @property
    def done(self) -> dict:
        done = self.ev("run.done")
        assert len(done) == 1, f"expected one run.done, got {done}\n{self.log}"
        return done[0]

    def calls(self, tool: str) -> list[str]:
        path = self.root / f"{tool}.log"
        return path.read_text().splitlines() if path.exists() else []


def parse_events(text: str) -> list[dict]:
    """Event objects of every contract line in ``text``, in order."""
    return [json.loads(line[len(EVENT_PREFIX):]) for line in text.splitlines() if line.startswith(EVENT_PREFIX)]


@dataclass
class Sandbox:
    """A temporary instance: stubs on PATH, a ComfyUI dir, served files and the run env."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, tmp: Path) -> Sandbox:
        root = tmp / "stub"
        bindir = root / "bin"
        bindir.mkdir(parents=True)
        for name, text in STUBS.items():
            path = bindir / name
            path.write_text(text)
            path.chmod(0o755)
        (root / "torch_version").write_text("2.5.1+cu124 12.4 True\n")
        comfy = tmp / "workspace" / "ComfyUI"
        (comfy / "models").mkdir(parents=True)
        env = {
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(tmp),
            "TMPDIR": str(tmp),
            "STUB_ROOT": str(root),
            # A nested dir that does not exist yet: the script must create it.
            "PROV_LOG_PATH": str(tmp / "var" / "log" / "vastops" / "provision.log"),
            "PROV_RUN_ID": "r-test1",
            "PROV_HEARTBEAT_S": "0",
            "COMFYUI_DIR": str(comfy),
            # Missing on purpose: the script must fall back to python3 on PATH.
            "PROV_PYTHON": str(tmp / "no-venv" / "python"),
        }
        return cls(root=root, env=env)

    def serve(self, url: str, body: bytes, *, length: int | None = None, auth: str | None = None) -> None:
        hostpath = url.split("://", 1)[1].split("?", 1)[0]
        path = self.root / "www" / hostpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        if length is not None:
            Path(f"{path}.len").write_text(str(length))
        if auth is not None:
            Path(f"{path}.auth").write_text(auth)

    def repo(self, name: str, requirements: str | None) -> None:
        path = self.root / "repos" / name
        path.mkdir(parents=True, exist_ok=True)
        if requirements is not None:
            (path / "requirements.txt").write_text(requirements)

    def run(self, **env: str) -> Run:
        full = {**self.env, **env}
        proc = subprocess.run([BASH, str(SCRIPT)], env=full, capture_output=True, text=True, timeout=60,
                              cwd=self.root)
        return Run(rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                   log_path=Path(full["PROV_LOG_PATH"]), root=self.root)
