#!/usr/bin/env bash
# vastops provisioning script for ComfyUI on Vast.ai.
#
# The bot's onstart fetches this file, checks its SHA-256 and runs it in the background. Every step
# prints one event line on stdout and in $PROV_LOG_PATH (the whole run is copied there too):
#
#   @@prov {"v":1,"run":"r-7f3a","att":1,"seq":12,"ts":"2026-01-01T10:00:00Z","ev":"node.reqs","st":"fail",...}
#
# The prefix, fields, event names and variable names are defined once in
# bot/provisioning/contract.py; tests/provisioning fails if this file drifts from it.
#
# Environment (set by the bot, see bot/provisioning/onstart.py):
#   PROV_LOG_PATH       required: the log file the watcher reads. Never hard-coded here.
#   PROV_RUN_ID         run id chosen by the bot            PROV_EVENT_PREFIX  event line prefix
#   PROV_NODES          "url[@ref][!] ..." custom nodes, "!" marks a node as required
#   PROV_MODELS         "dir|url[|min_bytes[|size_bytes]] ..." models (dir relative to ComfyUI/models)
#   PROV_MANIFEST       path or http(s) URL of a manifest with lines "node SPEC", "model SPEC",
#                       "apt PKG...", "pip PKG..." (for lists too long for one 255-char env value)
#   PROV_APT_PACKAGES / PROV_PIP_PACKAGES   extra packages
#   PROV_HEARTBEAT_S    heartbeat interval, default 30, 0 disables
#   PROV_MIN_BYTES      default size floor of a model file (1 MB)
#   PROV_DISK_MARGIN_MB free space kept on top of each download (1024)
#   PROV_WAIT_COMFYUI_S how long to wait for the image to put ComfyUI in place (600)
#   COMFYUI_DIR         default /workspace/ComfyUI     PROV_PYTHON  default /venv/main/bin/python
#   HF_TOKEN, CIVITAI_TOKEN  sent as "Authorization: Bearer" headers to their own hosts only.
#
# Never add `set -x` or echo a command line that carries a header: tokens would land in the log.
set -Eeuo pipefail
umask 022

SCRIPT_VER=1
SCHEMA_V=1
PROV_EVENT_PREFIX="${PROV_EVENT_PREFIX:-@@prov }"
RUN_ID="${PROV_RUN_ID:-unknown}"
COMFYUI_DIR="${COMFYUI_DIR:-/workspace/ComfyUI}"
MIN_BYTES_DEFAULT="${PROV_MIN_BYTES:-1048576}"
DISK_MARGIN_MB="${PROV_DISK_MARGIN_MB:-1024}"
HEARTBEAT_S="${PROV_HEARTBEAT_S:-30}"
WAIT_COMFYUI_S="${PROV_WAIT_COMFYUI_S:-600}"
T0=$SECONDS

STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/vastops-prov.XXXXXX")"
chmod 700 "$STATE_DIR"
echo 0 >"$STATE_DIR/seq"
echo init >"$STATE_DIR/step"
HAVE_FLOCK=0
command -v flock >/dev/null 2>&1 && HAVE_FLOCK=1
ATT="${PROV_ATTEMPT:-1}"
STEP=init
FAIL_WHY=""
FIRST_FAIL_STEP=""
TEE_PID=""
HB_PID=""
NODES_OK=0
NODES_FAIL=0
NODES_CHANGED=0
MODELS_OK=0
MODELS_FAIL=0
TORCH_BASE=""
PY=""
NODES=()
MODELS=()
APT_PKGS=()
PIP_PKGS=()

# ------------------------------------------------------------------ event lines

# _clean TEXT -> REPLY: secrets, URL query strings and userinfo removed, one line of printable
# ASCII, JSON-escaped and capped, so an event can never leak a token or break the line format.
_clean() {
  local LC_ALL=C s=$1 t
  for t in "${HF_TOKEN:-}" "${CIVITAI_TOKEN:-}"; do
    if [[ -n $t ]]; then s=${s//"$t"/[redacted]}; fi
  done
  local re_userinfo='(https?://)[^/@[:space:]"]+@' re_query='(https?://[^?#[:space:]"]*)[?#][^[:space:]"]*'
  while [[ $s =~ $re_userinfo ]]; do s=${s/"${BASH_REMATCH[0]}"/"${BASH_REMATCH[1]}"}; done
  while [[ $s =~ $re_query ]]; do s=${s/"${BASH_REMATCH[0]}"/"${BASH_REMATCH[1]}"}; done
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//[$'\t\r\n']/ }
  s=${s//[^[:print:]]/}
  REPLY=${s:0:200}
}

# emit EV ST [key=string | key:=number|true|false|null]...
emit() {
  local ev=$1 st=$2 kv k v extras="" base line seq ts
  shift 2
  for kv in "$@"; do
    k=${kv%%=*}
    if [[ $k == *: ]]; then
      k=${k%:}
      v=${kv#*:=}
      if [[ $v =~ ^(-?[0-9]+(\.[0-9]+)?|true|false|null)$ ]]; then
        extras+=",\"$k\":$v"
        continue
      fi
    else
      v=${kv#*=}
    fi
    _clean "$v"
    extras+=",\"$k\":\"$REPLY\""
  done
  _clean "$RUN_ID"
  local run=$REPLY
  {
    if ((HAVE_FLOCK)); then flock 9 || true; fi
    seq=$(($(<"$STATE_DIR/seq") + 1))
    echo "$seq" >"$STATE_DIR/seq"
    TZ=UTC printf -v ts '%(%Y-%m-%dT%H:%M:%SZ)T' -1
    base="{\"v\":$SCHEMA_V,\"run\":\"$run\",\"att\":$ATT,\"seq\":$seq,\"ts\":\"$ts\",\"ev\":\"$ev\",\"st\":\"$st\""
    line="$base$extras}"
    # Keep every line under 1 KB so it is written atomically and survives log chunking.
    if ((${#line} > 1000)); then line="$base,\"trunc\":true}"; fi
    printf '%s %s\n' "${PROV_EVENT_PREFIX% }" "$line"
  } 9>>"$STATE_DIR/lock"
}

set_step() {
  STEP=$1
  printf '%s\n' "$1" >"$STATE_DIR/step"
}

# host + path of a URL: what events may show of it.
url_hostpath() {
  local u=${1%%[?#]*}
  u=${u#*://}
  REPLY=${u#*@}
}

# ------------------------------------------------------------------ exit handling

on_err() {
  local rc=$1 line=$2 cmd=$3
  if [[ -z $FAIL_WHY ]]; then FAIL_WHY="rc $rc at line $line: $cmd"; fi
  if [[ -z $FIRST_FAIL_STEP ]]; then FIRST_FAIL_STEP=$STEP; fi
}

stop_heartbeat() {
  if [[ -n $HB_PID ]]; then
    kill "$HB_PID" 2>/dev/null || true
    wait "$HB_PID" 2>/dev/null || true
    HB_PID=""
  fi
}

on_exit() {
  local rc=$? st=ok step
  trap - ERR
  set +e
  stop_heartbeat
  if ((rc != 0)); then
    st=fail
  elif ((NODES_FAIL > 0)); then
    st=degraded
  fi
  step=${FIRST_FAIL_STEP:-$STEP}
  if [[ $st == ok ]]; then step="done"; fi
  if [[ $st == fail && -z $FAIL_WHY ]]; then FAIL_WHY="exited with rc $rc"; fi
  local extra=()
  if [[ -n $FAIL_WHY ]]; then extra+=("why=$FAIL_WHY"); fi
  emit run.done "$st" "step=$step" "rc:=$rc" "nodes_ok:=$NODES_OK" "nodes_fail:=$NODES_FAIL" \
    "models_ok:=$MODELS_OK" "models_fail:=$MODELS_FAIL" "dur_s:=$((SECONDS - T0))" "${extra[@]}"
  if [[ -n $TEE_PID ]]; then
    # Close our end of the tee pipe and wait, so the log is complete when this process ends.
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
  fi
  rm -rf "$STATE_DIR"
  exit "$rc"
}

trap 'on_err "$?" "$LINENO" "$BASH_COMMAND"' ERR
trap on_exit EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# fail WHY: stop the run here; run.done carries the step and WHY.
fail() {
  FAIL_WHY=$1
  FIRST_FAIL_STEP=${FIRST_FAIL_STEP:-$STEP}
  exit 1
}

# ------------------------------------------------------------------ helpers

# run_logged CMD...: run with output streamed to the log; REPLY <- the most telling output line.
run_logged() {
  local rc=0 out="$STATE_DIR/out"
  "$@" 2>&1 | tee "$out" || rc=${PIPESTATUS[0]}
  REPLY=$(grep -E -i 'error|fatal|failed|denied|not found' "$out" | tail -n 1 || true)
  if [[ -z $REPLY ]]; then REPLY=$(grep -v '^[[:space:]]*$' "$out" | tail -n 1 || true); fi
  return "$rc"
}

start_heartbeat() {
  if ! [[ $HEARTBEAT_S =~ ^[0-9]+$ ]] || ((HEARTBEAT_S == 0)); then return 0; fi
  local parent=$$
  (
    trap - ERR EXIT TERM INT
    set +e
    while kill -0 "$parent" 2>/dev/null; do
      # sleep must not hold the log pipe open, or the final wait for tee would block on it.
      sleep "$HEARTBEAT_S" >/dev/null 2>&1
      emit heartbeat ok "step=$(<"$STATE_DIR/step")" "dur_s:=$((SECONDS - T0))"
      if [[ -f $STATE_DIR/dl ]]; then
        local name tmp total
        IFS='|' read -r name tmp total <"$STATE_DIR/dl"
        emit model.progress ok "name=$name" "bytes:=$(du -sb "$tmp" 2>/dev/null | cut -f1)" \
          "total:=${total:-null}"
      fi
    done
  ) &
  HB_PID=$!
}

resolve_python() {
  PY="${PROV_PYTHON:-/venv/main/bin/python}"
  if [[ ! -x $PY ]]; then
    PY=$(command -v python3 || command -v python || true)
  fi
}

# torch_probe -> TORCH_VER TORCH_CUDA TORCH_AVAIL ("none" when torch does not import)
torch_probe() {
  local out
  TORCH_VER=none TORCH_CUDA=none TORCH_AVAIL=false
  if [[ -z $PY ]]; then return 0; fi
  out=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())' \
    2>/dev/null | tail -n 1) || return 0
  read -r TORCH_VER TORCH_CUDA TORCH_AVAIL <<<"$out"
  TORCH_VER=${TORCH_VER:-none}
  TORCH_CUDA=${TORCH_CUDA:-none}
  if [[ ${TORCH_AVAIL:-} == True ]]; then TORCH_AVAIL=true; else TORCH_AVAIL=false; fi
}

# check_torch AFTER: a torch replaced by some pip step breaks ComfyUI's CUDA build; fail loudly.
check_torch() {
  torch_probe
  if [[ $TORCH_VER != "$TORCH_BASE" ]]; then
    emit torch fail "ver=$TORCH_VER" "base=$TORCH_BASE" "cuda=$TORCH_CUDA" "available:=$TORCH_AVAIL" \
      "changed:=true" "after=$1"
    fail "torch changed from $TORCH_BASE to $TORCH_VER after $1"
  fi
  emit torch ok "ver=$TORCH_VER" "cuda=$TORCH_CUDA" "available:=$TORCH_AVAIL" "changed:=false" "after=$1"
}

# free_kb DIR -> REPLY: free KiB on the filesystem holding DIR (or its nearest existing parent).
free_kb() {
  local d=$1
  while [[ ! -d $d && $d == */* ]]; do d=${d%/*}; done
  REPLY=$(df -Pk "${d:-/}" 2>/dev/null | awk 'NR==2 {print $4}' || true)
  uint "$REPLY"
  REPLY=$UINT
}

# uint TEXT -> UINT: TEXT if it is a plain non-negative integer, else 0. Everything that reaches
# $(( )) from a tool goes through here: bash abandons a whole loop on an arithmetic syntax error.
uint() {
  if [[ $1 =~ ^[0-9]{1,18}$ ]]; then UINT=$((10#$1)); else UINT=0; fi
}

gb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1048576 }'; }

# auth_header URL -> REPLY: curl -H argument (a header file) for the URL's host, or "".
# The token goes into a 0600 file read by curl, never onto a command line or into a URL.
auth_header() {
  local host=${1#*://}
  host=${host%%[/?#]*}
  host=${host##*@}
  local token="" file="$STATE_DIR/auth-$2"
  case $host in
    huggingface.co | *.huggingface.co | hf.co) token=${HF_TOKEN:-} ;;
    civitai.com | *.civitai.com) token=${CIVITAI_TOKEN:-} ;;
  esac
  REPLY=""
  if [[ -n $token ]]; then
    printf 'Authorization: Bearer %s\n' "$token" >"$file"
    REPLY="@$file"
  fi
}

# ------------------------------------------------------------------ inputs

add_spec() {
  local kind=$1
  shift
  case $kind in
    node) NODES+=("$@") ;;
    model) MODELS+=("$@") ;;
    apt) APT_PKGS+=("$@") ;;
    pip) PIP_PKGS+=("$@") ;;
    *) return 1 ;;
  esac
}

load_inputs() {
  local words kind line manifest
  read -r -a words <<<"${PROV_NODES:-}"
  NODES+=("${words[@]}")
  read -r -a words <<<"${PROV_MODELS:-}"
  MODELS+=("${words[@]}")
  read -r -a words <<<"${PROV_APT_PACKAGES:-}"
  APT_PKGS+=("${words[@]}")
  read -r -a words <<<"${PROV_PIP_PACKAGES:-}"
  PIP_PKGS+=("${words[@]}")
  manifest=${PROV_MANIFEST:-}
  if [[ -z $manifest ]]; then return 0; fi
  set_step fetch
  if [[ $manifest =~ ^https?:// ]]; then
    local dest="$STATE_DIR/manifest" code rc=0 t=$SECONDS
    url_hostpath "$manifest"
    local hp=$REPLY host=${REPLY%%/*} path
    path=${hp#"$host"}
    path=/${path#/}
    auth_header "$manifest" manifest
    local hdr=()
    if [[ -n $REPLY ]]; then hdr=(-H "$REPLY"); fi
    code=$(curl -fsSL --retry 3 --retry-connrefused --retry-delay 2 --max-time 120 "${hdr[@]}" \
      -o "$dest" -w '%{http_code}' "$manifest") || rc=$?
    if ((rc != 0)); then
      emit fetch fail what=manifest "host=$host" "path=$path" "http:=${code:-0}" "rc:=$rc"
      fail "manifest fetch failed: $hp (http ${code:-0}, curl rc $rc)"
    fi
    emit fetch ok what=manifest "host=$host" "path=$path" "http:=${code:-0}" "bytes:=$(wc -c <"$dest")" \
      "dur_s:=$((SECONDS - t))"
    manifest=$dest
  elif [[ ! -r $manifest ]]; then
    fail "manifest not readable: $manifest"
  fi
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%%#*}
    read -r -a words <<<"$line"
    if ((${#words[@]} == 0)); then continue; fi
    kind=${words[0]}
    if ! add_spec "$kind" "${words[@]:1}"; then fail "manifest: unknown line kind '$kind'"; fi
  done <"$manifest"
}

# ------------------------------------------------------------------ steps

step_env() {
  set_step env
  local gpu="" driver="" cc="" cuda="" ngpu=0 py_ver="" q
  if command -v nvidia-smi >/dev/null 2>&1; then
    q=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true)
    ngpu=$(grep -c . <<<"$q" || true)
    IFS=',' read -r gpu driver <<<"$(head -n 1 <<<"$q")"
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 || true)
    cuda=$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -n 1 || true)
    cuda=${cuda##* }
  fi
  free_kb "$COMFYUI_DIR"
  local free=$REPLY
  local total
  total=$(df -Pk "$(dirname "$COMFYUI_DIR")" 2>/dev/null | awk 'NR==2 {print $2}' || true)
  uint "$total"
  total=$UINT
  if [[ -n $PY ]]; then
    py_ver=$("$PY" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || true)
  fi
  local st=ok
  if [[ -z $gpu ]]; then st=warn; fi
  emit env "$st" "gpu=${gpu# }" "ngpu:=${ngpu:-0}" "driver=${driver# }" "cc=${cc// /}" "cuda_max=$cuda" \
    "disk_free_gb:=$(gb "$free")" "disk_total_gb:=$(gb "${total:-0}")" "py=${py_ver:-none}" \
    "python=${PY:-none}" "comfyui=$COMFYUI_DIR"
}

wait_for_comfyui() {
  set_step wait
  local waited=0
  # On vastai/comfyui the image's own boot moves ComfyUI into the workspace while we start.
  while [[ ! -d $COMFYUI_DIR ]] && ((waited < WAIT_COMFYUI_S)); do
    if ((waited % 60 == 0)); then echo "vastops: waiting for ComfyUI at $COMFYUI_DIR (${waited}s)"; fi
    sleep 5
    waited=$((waited + 5))
  done
  if [[ ! -d $COMFYUI_DIR ]]; then fail "ComfyUI not found at $COMFYUI_DIR after ${WAIT_COMFYUI_S}s"; fi
}

step_apt() {
  if ((${#APT_PKGS[@]} == 0)); then return 0; fi
  set_step apt
  local t=$SECONDS
  emit apt start "n:=${#APT_PKGS[@]}"
  if ! run_logged env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    || ! run_logged env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${APT_PKGS[@]}"; then
    local why=$REPLY
    emit apt fail "n:=${#APT_PKGS[@]}" "dur_s:=$((SECONDS - t))" "why=$why"
    fail "apt install failed: $why"
  fi
  emit apt ok "n:=${#APT_PKGS[@]}" "dur_s:=$((SECONDS - t))"
}

step_pip() {
  if ((${#PIP_PKGS[@]} == 0)); then return 0; fi
  set_step pip
  local t=$SECONDS
  emit pip start "n:=${#PIP_PKGS[@]}"
  if ! run_logged "$PY" -m pip install --no-input "${PIP_PKGS[@]}"; then
    local why=$REPLY
    emit pip fail "n:=${#PIP_PKGS[@]}" "dur_s:=$((SECONDS - t))" "why=$why"
    check_torch pip
    fail "pip install failed: $why"
  fi
  emit pip ok "n:=${#PIP_PKGS[@]}" "dur_s:=$((SECONDS - t))"
  check_torch pip
}

# node_failed REQUIRED NAME WHY: a required node ends the run, an optional one degrades it.
node_failed() {
  NODES_FAIL=$((NODES_FAIL + 1))
  if [[ $1 == true ]]; then fail "required node $2: $3"; fi
  FIRST_FAIL_STEP=${FIRST_FAIL_STEP:-$STEP}
}

install_node() {
  local spec=$1 required=false url ref="" tail name dest t rc
  if [[ $spec == *! ]]; then
    required=true
    spec=${spec%!}
  fi
  url=$spec
  tail=${spec##*/}
  if [[ $tail == *@* ]]; then
    ref=${tail##*@}
    url=${spec%@*}
  fi
  name=${url%/}
  name=${name##*/}
  name=${name%.git}
  dest="$COMFYUI_DIR/custom_nodes/$name"
  set_step "node:$name"
  url_hostpath "$url"
  local hp=$REPLY
  t=$SECONDS
  if [[ -e $dest ]]; then
    emit node.clone skip "name=$name" "required:=$required" "why=already present"
  else
    emit node.clone start "name=$name" "url=$hp" "ref=$ref" "required:=$required"
    rc=0
    if [[ -n $ref ]]; then
      run_logged git clone --quiet --filter=blob:none "$url" "$dest" \
        && run_logged git -C "$dest" checkout --quiet "$ref" || rc=$?
    else
      run_logged git clone --quiet --depth 1 "$url" "$dest" || rc=$?
    fi
    if ((rc != 0)); then
      local why=$REPLY
      rm -rf "$dest"
      emit node.clone fail "name=$name" "rc:=$rc" "why=$why" "required:=$required"
      node_failed "$required" "$name" "clone failed: $why"
      return 0
    fi
    NODES_CHANGED=$((NODES_CHANGED + 1))
    emit node.clone ok "name=$name" "rc:=0" "dur_s:=$((SECONDS - t))" "required:=$required"
  fi
  if [[ ! -f $dest/requirements.txt ]]; then
    emit node.reqs skip "name=$name" "why=no requirements.txt" "required:=$required"
    NODES_OK=$((NODES_OK + 1))
    return 0
  fi
  t=$SECONDS
  emit node.reqs start "name=$name" "required:=$required"
  rc=0
  run_logged "$PY" -m pip install --no-input -r "$dest/requirements.txt" || rc=$?
  local why=$REPLY
  if ((rc != 0)); then
    emit node.reqs fail "name=$name" "rc:=$rc" "why=$why" "required:=$required" "dur_s:=$((SECONDS - t))"
  else
    emit node.reqs ok "name=$name" "rc:=0" "required:=$required" "dur_s:=$((SECONDS - t))"
  fi
  NODES_CHANGED=$((NODES_CHANGED + 1))
  # Even a failed install may have swapped torch before it broke, so always probe.
  check_torch "node.reqs:$name"
  if ((rc != 0)); then
    node_failed "$required" "$name" "requirements failed: $why"
    return 0
  fi
  NODES_OK=$((NODES_OK + 1))
}

# looks_like_error_page FILE: Civitai/HF answer some failures with a JSON or HTML body and 200.
looks_like_error_page() {
  local head
  head=$(head -c 64 "$1" | tr -d '[:space:]\000' | head -c 16 | tr '[:upper:]' '[:lower:]' || true)
  [[ $head == '{'* || $head == '['* || $head == '<!doctype'* || $head == '<html'* || $head == '<?xml'* ]]
}

model_failed() {
  MODELS_FAIL=$((MODELS_FAIL + 1))
  FIRST_FAIL_STEP=${FIRST_FAIL_STEP:-$STEP}
  FAIL_WHY=${FAIL_WHY:-$1}
}

download_model() {
  local spec=$1 dir url min size name hp host path dest_dir
  IFS='|' read -r dir url min size <<<"$spec"
  if [[ -z $dir || -z $url ]]; then fail "bad model spec (want dir|url[|min_bytes[|size_bytes]]): $spec"; fi
  min=${min:-$MIN_BYTES_DEFAULT}
  size=${size:-0}
  if ! [[ $min =~ ^[0-9]+$ && $size =~ ^[0-9]+$ ]]; then fail "bad model spec sizes: $spec"; fi
  if [[ $dir == /* ]]; then dest_dir=$dir; else dest_dir="$COMFYUI_DIR/models/$dir"; fi
  url_hostpath "$url"
  hp=$REPLY
  host=${hp%%/*}
  path=${hp#"$host"}
  path=/${path#/}
  name=${path##*/}
  set_step "model:$name"
  mkdir -p "$dest_dir"

  # Already there from an earlier attempt (onstart runs on every boot): keep it.
  if [[ $name == *.* && -f $dest_dir/$name ]] && (($(wc -c <"$dest_dir/$name") >= min)); then
    emit model.done skip "name=$name" "dest=$dest_dir" "bytes:=$(wc -c <"$dest_dir/$name")" "why=already present"
    MODELS_OK=$((MODELS_OK + 1))
    return 0
  fi

  local hdr=()
  auth_header "$url" model
  if [[ -n $REPLY ]]; then hdr=(-H "$REPLY"); fi

  # Refuse before downloading: a full disk half-way through a 20 GB file wastes the whole rental.
  if ((size == 0)); then
    size=$(curl -sIL --retry 3 --retry-connrefused --max-time 60 "${hdr[@]}" "$url" 2>/dev/null \
      | tr -d '\r' | awk 'tolower($1) == "content-length:" { n = $2 } END { print n }' || true)
    uint "$size"
    size=$UINT
  fi
  free_kb "$dest_dir"
  local free_kb_now=$REPLY
  local need_kb=$(((size + 1023) / 1024 + DISK_MARGIN_MB * 1024))
  if ((size == 0)); then
    if ((free_kb_now < DISK_MARGIN_MB * 1024)); then
      emit disk.check fail "name=$name" "need_gb:=$(gb $((DISK_MARGIN_MB * 1024)))" \
        "free_gb:=$(gb "$free_kb_now")" "why=size unknown and free space below the margin"
      fail "disk nearly full before $name: $(gb "$free_kb_now") GB free"
    fi
    emit disk.check warn "name=$name" "need_gb:=null" "free_gb:=$(gb "$free_kb_now")" \
      "why=size unknown (no Content-Length)"
  elif ((free_kb_now < need_kb)); then
    emit disk.check fail "name=$name" "need_gb:=$(gb "$need_kb")" "free_gb:=$(gb "$free_kb_now")"
    fail "not enough disk for $name: needs $(gb "$need_kb") GB, $(gb "$free_kb_now") GB free"
  else
    emit disk.check ok "name=$name" "need_gb:=$(gb "$need_kb")" "free_gb:=$(gb "$free_kb_now")"
  fi

  local tmp t=$SECONDS rc=0
  tmp=$(mktemp -d "$dest_dir/.vastops-dl.XXXXXX")
  printf '%s|%s|%s\n' "$name" "$tmp" "$size" >"$STATE_DIR/dl"
  emit model.start start "name=$name" "host=$host" "path=$path" "dest=$dest_dir" "total:=$size"
  # -J takes the server's file name (Civitai's /api/download/models/<id> has none in the URL).
  local here=$PWD
  cd "$tmp"
  run_logged curl -fsSL --retry 3 --retry-connrefused --retry-delay 5 -O -J "${hdr[@]}" "$url" || rc=$?
  local why=$REPLY
  cd "$here"
  rm -f "$STATE_DIR/dl"
  local files=("$tmp"/*)
  local file=${files[0]}
  local got=0
  if [[ -f $file ]]; then got=$(wc -c <"$file"); fi
  if ((rc != 0)); then
    why="download failed (curl rc $rc): $why"
  elif [[ ! -f $file ]]; then
    why="download produced no file"
  elif ((got < min)); then
    why="file too small: $got bytes < $min"
  elif [[ ! ${file##*/} =~ \.(json|ya?ml|txt|html?)$ ]] && looks_like_error_page "$file"; then
    why="got a JSON/HTML page instead of a model: $(head -c 80 "$file" | tr '\n' ' ')"
    rc=1
  else
    why=""
  fi
  if [[ -n $why ]]; then
    rm -rf "$tmp"
    emit model.done fail "name=$name" "dest=$dest_dir" "bytes:=$got" "rc:=$rc" "why=$why"
    model_failed "model $name: $why"
    return 0
  fi
  name=${file##*/}
  mv -f "$file" "$dest_dir/$name"
  rm -rf "$tmp"
  local dur=$((SECONDS - t))
  emit model.done ok "name=$name" "dest=$dest_dir" "bytes:=$got" "dur_s:=$dur" \
    "rate:=$(awk -v b="$got" -v s="$dur" 'BEGIN { printf "%.1f", b / 1048576 / (s > 0 ? s : 1) }')"
  MODELS_OK=$((MODELS_OK + 1))
}

restart_comfyui() {
  if ((NODES_CHANGED == 0)) || ! command -v supervisorctl >/dev/null 2>&1; then return 0; fi
  # The image started ComfyUI before our nodes existed; restart it so they are imported.
  echo "vastops: restarting ComfyUI to load new custom nodes"
  supervisorctl restart comfyui || echo "vastops: supervisorctl restart comfyui failed (continuing)"
}

# ------------------------------------------------------------------ main

if [[ -z ${PROV_LOG_PATH:-} ]]; then
  set_step init
  fail "PROV_LOG_PATH is not set: the bot must pass the log path the watcher reads"
fi
mkdir -p -- "$(dirname -- "$PROV_LOG_PATH")"
if [[ -z ${PROV_ATTEMPT:-} ]]; then
  # The instance re-runs onstart on every boot; count attempts per run id next to the log.
  att_file="$(dirname -- "$PROV_LOG_PATH")/.vastops-attempt-${RUN_ID//[^A-Za-z0-9._-]/_}"
  uint "$(cat "$att_file" 2>/dev/null || true)"
  ATT=$((UINT + 1))
  echo "$ATT" >"$att_file"
fi
tee_opts=(-a)
if tee --help 2>&1 | grep -q -- '--output-error'; then
  # Keep writing the log even if whoever reads our stdout goes away.
  tee_opts+=(--output-error=warn-nopipe)
fi
exec > >(tee "${tee_opts[@]}" "$PROV_LOG_PATH") 2>&1
TEE_PID=$!

resolve_python
emit run.start start "script_ver:=$SCRIPT_VER" "log=$PROV_LOG_PATH" "pid:=$$"
start_heartbeat
load_inputs
wait_for_comfyui
step_env

set_step torch
torch_probe
TORCH_BASE=$TORCH_VER
if [[ $TORCH_BASE == none ]]; then
  emit torch warn "ver=none" "changed:=false" "after=start" "why=torch does not import with ${PY:-no python}"
else
  emit torch ok "ver=$TORCH_VER" "cuda=$TORCH_CUDA" "available:=$TORCH_AVAIL" "changed:=false" "after=start"
fi

step_apt
step_pip
mkdir -p "$COMFYUI_DIR/custom_nodes"
for spec in "${NODES[@]}"; do install_node "$spec"; done
for spec in "${MODELS[@]}"; do download_model "$spec"; done
# Belt and braces: every listed node and model must have been accounted for, or something
# aborted a loop without failing the run.
if ((NODES_OK + NODES_FAIL != ${#NODES[@]} || MODELS_OK + MODELS_FAIL != ${#MODELS[@]})); then
  set_step check
  fail "internal: $((NODES_OK + NODES_FAIL))/${#NODES[@]} nodes and $((MODELS_OK + MODELS_FAIL))/${#MODELS[@]} models processed"
fi
if ((MODELS_FAIL > 0)); then
  set_step models
  fail "$MODELS_FAIL model download(s) failed; first: $FAIL_WHY"
fi
set_step finish
restart_comfyui
set_step "done"
