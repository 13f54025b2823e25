#!/usr/bin/env bash
# Set up ComfyUI + Reelsmith on a fresh Ubuntu 22.04/24.04 GPU instance, or add Reelsmith to an existing
# ComfyUI. Re-running upgrades in place (requirements, config, service) and changes nothing when nothing
# changed. See `--help`, and docs/setup.md.
#
# What it does, in order:
#   1. checks the OS (Ubuntu 22.04/24.04) and the NVIDIA driver (nvidia-smi), and that the port is free;
#   2. installs ComfyUI with comfy-cli into a virtual environment (or uses --comfyui DIR);
#   3. links this pack into ComfyUI/custom_nodes/Reelsmith and pip-installs requirements.txt into
#      ComfyUI's Python (with --fast-path also sageattention, on GPUs of compute capability >= 8.0);
#   4. writes <ComfyUI>/.reelsmith/extra_model_paths.yaml (model folders; a --models-dir on a data disk);
#   5. installs a systemd service reelsmith-comfyui.service: ComfyUI on 127.0.0.1:<port>;
#   6. writes <ComfyUI>/.reelsmith/install-state last, so a half-finished run is never marked complete.
#
# Overrides for tests: REELSMITH_OS_RELEASE (os-release file), REELSMITH_NVIDIA_SMI (nvidia-smi command),
# REELSMITH_PIP (pip command, e.g. "echo pip").
set -euo pipefail

PACK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SERVICE_NAME="reelsmith-comfyui.service"
PACK_LINK_NAME="Reelsmith"

COMFYUI_DIR=""
WORKSPACE="${HOME:-/root}/comfy"
MODELS_DIR=""
PORT=8188
LISTEN_ALL=0
FAST_PATH=0
CHECK=0
DRY_RUN=0
NO_SYSTEMD=0
SKIP_PIP=0
ALLOW_NO_GPU=0
ALLOW_OS=0
PYTHON_BIN=""
SERVICE_FILE=""
SERVICE_USER="$(id -un)"  # run this script as the user ComfyUI should run as (not with sudo)
OS_RELEASE="${REELSMITH_OS_RELEASE:-/etc/os-release}"
NVIDIA_SMI="${REELSMITH_NVIDIA_SMI:-nvidia-smi}"

usage() {
  cat <<EOF
Usage: scripts/setup_instance.sh [options]

Install ComfyUI (comfy-cli) + Reelsmith on an Ubuntu 22.04/24.04 NVIDIA GPU instance, or add Reelsmith
to an existing ComfyUI, and run it as the systemd service $SERVICE_NAME on 127.0.0.1.

  --comfyui DIR        use the existing ComfyUI in DIR (default: install one into --workspace)
  --workspace DIR      where a new ComfyUI goes: DIR/ComfyUI, venv in DIR/venv (default: ~/comfy)
  --python PATH        the Python ComfyUI runs with (default: detected: DIR/.venv, DIR/venv, ../venv)
  --models-dir DIR     model folder (e.g. a data disk); default <ComfyUI>/models
  --port N             port ComfyUI listens on (default 8188); must be free
  --listen-all         listen on 0.0.0.0 instead of 127.0.0.1 (ComfyUI has NO authentication!)
  --fast-path          also install sageattention when the GPU has compute capability >= 8.0
  --check              print what is installed, the GPU, driver, CUDA, free VRAM and disk, and what
                       is missing; change nothing (exit 1 when something is missing)
  --dry-run            print what would be done; change nothing
  --no-systemd         render the service file (to --service-file or <ComfyUI>/.reelsmith/) but do
                       not install or start it; no root needed
  --service-file PATH  where to write the unit (default /etc/systemd/system/$SERVICE_NAME)
  --user NAME          user the service runs as (default: the user running this script; run it as
                       that user, not with sudo: it calls sudo itself for the systemd steps)
  --skip-pip           install no Python packages (tests, offline re-runs)
  --allow-no-gpu       go on without an NVIDIA driver (testing; ComfyUI then runs on the CPU)
  --allow-unsupported-os  go on on an OS other than Ubuntu 22.04/24.04
  -h, --help           this help
EOF
}

die() { echo "error: $*" >&2; exit 1; }
note() { echo "==> $*"; }
warn() { echo "WARNING: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --comfyui) COMFYUI_DIR="${2:?--comfyui needs a folder}"; shift 2 ;;
    --workspace) WORKSPACE="${2:?--workspace needs a folder}"; shift 2 ;;
    --python) PYTHON_BIN="${2:?--python needs a path}"; shift 2 ;;
    --models-dir) MODELS_DIR="${2:?--models-dir needs a folder}"; shift 2 ;;
    --port) PORT="${2:?--port needs a number}"; shift 2 ;;
    --listen-all) LISTEN_ALL=1; shift ;;
    --fast-path) FAST_PATH=1; shift ;;
    --check) CHECK=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --no-systemd) NO_SYSTEMD=1; shift ;;
    --service-file) SERVICE_FILE="${2:?--service-file needs a path}"; shift 2 ;;
    --user) SERVICE_USER="${2:?--user needs a name}"; shift 2 ;;
    --skip-pip) SKIP_PIP=1; shift ;;
    --allow-no-gpu) ALLOW_NO_GPU=1; shift ;;
    --allow-unsupported-os) ALLOW_OS=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

case "$PORT" in
  ''|*[!0-9]*) die "--port must be a number, got '$PORT'" ;;
esac
[ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "--port must be 1..65535, got $PORT"
LISTEN_ADDR=127.0.0.1
[ "$LISTEN_ALL" = 1 ] && LISTEN_ADDR=0.0.0.0

# ------------------------------------------------------------------------------------------ probes

OS_ID=""; OS_VERSION=""; OS_PRETTY="unknown"
read_os() {
  if [ -r "$OS_RELEASE" ]; then
    OS_ID="$(. "$OS_RELEASE" && echo "${ID:-}")"
    OS_VERSION="$(. "$OS_RELEASE" && echo "${VERSION_ID:-}")"
    OS_PRETTY="$(. "$OS_RELEASE" && echo "${PRETTY_NAME:-${ID:-unknown} ${VERSION_ID:-}}")"
  fi
}
os_supported() { [ "$OS_ID" = ubuntu ] && { [ "$OS_VERSION" = 22.04 ] || [ "$OS_VERSION" = 24.04 ]; }; }

GPU_LINES=""; DRIVER=""; CUDA_DRIVER=""; MAX_CC=""
read_gpu() {
  local out
  if out="$($NVIDIA_SMI --query-gpu=index,name,compute_cap,driver_version,memory.free,memory.total \
             --format=csv,noheader,nounits 2>/dev/null)" && [ -n "$out" ]; then
    GPU_LINES="$out"
    DRIVER="$(echo "$out" | head -n1 | awk -F', *' '{print $4}')"
    MAX_CC="$(echo "$out" | awk -F', *' '{print $3}' | sort -g | tail -n1)"
    CUDA_DRIVER="$($NVIDIA_SMI 2>/dev/null | grep -o 'CUDA Version: *[0-9.]*' | awk '{print $3}' | head -n1 || true)"
  fi
}
cc_at_least_8() { [ -n "$MAX_CC" ] && awk -v c="$MAX_CC" 'BEGIN { exit !(c + 0 >= 8.0) }'; }

# The interpreter ComfyUI runs with: --python, else a venv beside or inside ComfyUI.
detect_python() {
  local dir="$1" candidate
  if [ -n "$PYTHON_BIN" ]; then echo "$PYTHON_BIN"; return; fi
  for candidate in "$dir/.venv/bin/python" "$dir/venv/bin/python" "$(dirname "$dir")/venv/bin/python" \
                   "$(dirname "$dir")/.venv/bin/python"; do
    if [ -x "$candidate" ]; then echo "$candidate"; return; fi
  done
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then echo "$VIRTUAL_ENV/bin/python"; return; fi
  command -v python3 || true
}

port_free() {  # host port
  local py
  py="$(command -v python3 || command -v python || true)"
  [ -n "$py" ] || { ! ss -ltn 2>/dev/null | awk '{print $4}' | grep -q ":$2\$"; return; }
  "$py" - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

pack_version() { sed -n 's/^version *= *"\(.*\)"/\1/p' "$PACK_ROOT/pyproject.toml" | head -n1; }
pack_commit() { git -C "$PACK_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown; }
comfy_version() { sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null | head -n1; }

# ------------------------------------------------------------------------------------------ --check

if [ -z "$COMFYUI_DIR" ]; then COMFY="$WORKSPACE/ComfyUI"; else COMFY="$COMFYUI_DIR"; fi
COMFY="${COMFY%/}"
STATE_DIR="$COMFY/.reelsmith"
MARKER="$STATE_DIR/install-state"
YAML="$STATE_DIR/extra_model_paths.yaml"
[ -n "$MODELS_DIR" ] || MODELS_DIR="$COMFY/models"
if [ -z "$SERVICE_FILE" ]; then
  if [ "$NO_SYSTEMD" = 1 ]; then SERVICE_FILE="$STATE_DIR/$SERVICE_NAME"; else SERVICE_FILE="/etc/systemd/system/$SERVICE_NAME"; fi
fi

read_os
read_gpu

if [ "$CHECK" = 1 ]; then
  missing=()
  echo "== System"
  echo "OS:        $OS_PRETTY$(os_supported || echo '  (unsupported: Ubuntu 22.04/24.04 expected)')"
  os_supported || missing+=("a supported OS (Ubuntu 22.04/24.04)")
  echo "== GPU"
  if [ -n "$GPU_LINES" ]; then
    echo "driver:    $DRIVER"
    echo "CUDA (driver): ${CUDA_DRIVER:-unknown}"
    while IFS= read -r line; do
      IFS=',' read -r idx name cc _drv free total <<<"$line"
      echo "GPU$idx:     $(echo "$name" | xargs), compute capability $(echo "$cc" | xargs), free VRAM $(echo "$free" | xargs) MiB of $(echo "$total" | xargs) MiB"
    done <<<"$GPU_LINES"
  else
    echo "none: no NVIDIA driver (nvidia-smi missing or failing)"
    missing+=("NVIDIA driver")
  fi
  echo "== ComfyUI"
  if [ -f "$COMFY/main.py" ]; then
    v="$(comfy_version "$COMFY" || true)"; echo "folder:    $COMFY (version ${v:-unknown})"
  else
    echo "folder:    $COMFY: not installed"; missing+=("ComfyUI in $COMFY")
  fi
  echo "== Python"
  PY="$(detect_python "$COMFY")"
  if [ -n "$PY" ] && [ -x "$PY" ]; then
    echo "python:    $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo '?'))"
    "$PY" - <<'PY' 2>/dev/null || echo "torch:     not importable"
import importlib.metadata as md
try:
    import torch
    cuda = torch.version.cuda or "none"
    print(f"torch:     {torch.__version__} (CUDA {cuda}, GPU available: {torch.cuda.is_available()})")
except Exception as exc:
    print(f"torch:     not importable ({type(exc).__name__})")
for name in ("diffusers", "transformers", "huggingface_hub", "av", "sageattention"):
    try:
        print(f"{name + ':':<10} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name + ':':<10} not installed")
PY
  else
    echo "python:    not found"; missing+=("ComfyUI's Python (pass --python)")
  fi
  echo "== Reelsmith"
  link="$COMFY/custom_nodes/$PACK_LINK_NAME"
  if [ -e "$link" ] && [ "$(cd "$link" && pwd -P)" = "$PACK_ROOT" ]; then
    echo "pack:      $link -> $PACK_ROOT ($(pack_version), $(pack_commit))"
  else
    echo "pack:      not linked into $COMFY/custom_nodes"; missing+=("Reelsmith in custom_nodes")
  fi
  if [ -f "$YAML" ]; then echo "config:    $YAML"; else echo "config:    $YAML missing"; missing+=("extra_model_paths.yaml"); fi
  if [ -f "$MARKER" ]; then
    echo "installed: complete"; sed 's/^/           /' "$MARKER"
  else
    echo "installed: no completed install recorded ($MARKER)"; missing+=("a completed setup run")
  fi
  echo "== Service"
  if [ -f "$SERVICE_FILE" ]; then
    echo "unit:      $SERVICE_FILE"
    grep -o -- '--listen [^ ]* --port [0-9]*' "$SERVICE_FILE" | sed 's/^/           /' || true
  else
    echo "unit:      $SERVICE_FILE not found"; missing+=("systemd service")
  fi
  if command -v systemctl >/dev/null 2>&1; then
    state="$(systemctl is-active "$SERVICE_NAME" 2>/dev/null || true)"
    echo "state:     ${state:-unknown (systemd not running?)}"
  fi
  echo "== Disk"
  disk_at="$MODELS_DIR"; while [ ! -e "$disk_at" ]; do disk_at="$(dirname "$disk_at")"; done
  df -h "$disk_at" | awk -v p="$MODELS_DIR" 'NR==2 {print "models:    " p ": " $4 " free of " $2}'
  echo "== Missing"
  if [ ${#missing[@]} -eq 0 ]; then echo "nothing"; exit 0; fi
  printf -- '- %s\n' "${missing[@]}"
  exit 1
fi

# ------------------------------------------------------------------------------------------ preflight

if ! os_supported; then
  if [ "$ALLOW_OS" = 1 ]; then
    warn "unsupported OS $OS_PRETTY; going on because of --allow-unsupported-os"
  else
    die "unsupported OS: $OS_PRETTY. This script supports Ubuntu 22.04 and 24.04 (--allow-unsupported-os to try anyway)."
  fi
fi
if [ -z "$GPU_LINES" ]; then
  if [ "$ALLOW_NO_GPU" = 1 ]; then
    warn "no NVIDIA driver found; going on because of --allow-no-gpu (ComfyUI will run on the CPU)"
  else
    die "no NVIDIA driver found (nvidia-smi is missing or fails). Install the NVIDIA driver first (e.g. 'sudo ubuntu-drivers install' and reboot), or pass --allow-no-gpu."
  fi
else
  note "GPU: $(echo "$GPU_LINES" | head -n1 | awk -F', *' '{print $2 ", compute capability " $3}'), driver $DRIVER, CUDA ${CUDA_DRIVER:-?}"
fi

# A running service of ours already holds the port on a re-run: that is not a conflict.
if ! port_free "$LISTEN_ADDR" "$PORT"; then
  ours=0
  if [ -f "$SERVICE_FILE" ] && grep -q -- "--port $PORT" "$SERVICE_FILE" && command -v systemctl >/dev/null 2>&1 \
     && systemctl is-active --quiet "$SERVICE_NAME" 2>/dev/null; then ours=1; fi
  [ "$ours" = 1 ] || die "port $PORT on $LISTEN_ADDR is already in use; stop what uses it (ss -ltnp | grep :$PORT) or pick another with --port"
fi

if [ "$LISTEN_ALL" = 1 ]; then
  cat >&2 <<EOF

##########################################################################################
WARNING: --listen-all makes ComfyUI listen on 0.0.0.0:$PORT. ComfyUI has NO authentication:
anyone who can reach this port can run workflows, read outputs and install custom nodes.
Only do this behind a firewall or a private network. The safe default is 127.0.0.1 plus
an SSH tunnel:  ssh -N -L $PORT:127.0.0.1:$PORT user@this-host
##########################################################################################

EOF
fi

CHANGED=0
run() {  # a command that changes the system
  echo "+ $*"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
  CHANGED=$((CHANGED + 1))
}
# Writes stdin to $1 only when the content differs; says which.
write_if_changed() {
  local target="$1" tmp
  tmp="$(mktemp)"
  cat >"$tmp"
  if [ -f "$target" ] && cmp -s "$tmp" "$target"; then
    echo "unchanged: $target"; rm -f "$tmp"; return 0
  fi
  if [ "$DRY_RUN" = 1 ]; then
    echo "would write: $target"; sed 's/^/    | /' "$tmp"; rm -f "$tmp"; return 0
  fi
  mkdir -p "$(dirname "$target")"
  cat "$tmp" >"$target.tmp.$$" && mv -f "$target.tmp.$$" "$target"
  rm -f "$tmp"
  echo "wrote: $target"
  CHANGED=$((CHANGED + 1))
}

# The marker is moved aside while we work and only put back (or rewritten) at the very end.
PREVIOUS_MARKER=""
if [ "$DRY_RUN" = 0 ] && [ -f "$MARKER" ]; then
  PREVIOUS_MARKER="$MARKER.previous"
  mv -f "$MARKER" "$PREVIOUS_MARKER"
fi

# ------------------------------------------------------------------------------------------ ComfyUI

if [ -n "$COMFYUI_DIR" ]; then
  [ -f "$COMFY/main.py" ] || die "--comfyui $COMFY is not a ComfyUI folder (no main.py)"
  note "using the existing ComfyUI in $COMFY"
elif [ -f "$COMFY/main.py" ] && { [ -n "$PREVIOUS_MARKER" ] || [ -f "$MARKER" ]; }; then
  note "ComfyUI already installed in $COMFY; keeping it (update it with: comfy --workspace $COMFY update comfy)"
elif [ -f "$COMFY/main.py" ] && [ -x "$WORKSPACE/venv/bin/comfy" ]; then
  # An earlier run stopped part-way (no install-state): let comfy-cli finish ComfyUI's dependencies.
  note "ComfyUI in $COMFY was not completely set up; restoring its dependencies with comfy-cli"
  gpu_flag=--nvidia; [ -n "$GPU_LINES" ] || gpu_flag=--cpu
  [ -n "$PYTHON_BIN" ] || PYTHON_BIN="$WORKSPACE/venv/bin/python"
  run env VIRTUAL_ENV="$WORKSPACE/venv" "$WORKSPACE/venv/bin/comfy" --skip-prompt --workspace "$COMFY" install --restore "$gpu_flag"
elif [ -f "$COMFY/main.py" ]; then
  note "using the ComfyUI already in $COMFY"
else
  note "installing ComfyUI into $COMFY with comfy-cli"
  VENV="$WORKSPACE/venv"
  # System packages a fresh Ubuntu image may lack: git, venv support.
  if ! command -v git >/dev/null || ! command -v python3 >/dev/null \
     || { [ ! -x "$VENV/bin/python" ] && ! python3 -c 'import venv, ensurepip' 2>/dev/null; }; then
    command -v apt-get >/dev/null || die "git and python3-venv are needed; install them and run again"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    run $SUDO apt-get update
    run $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y git python3 python3-venv python3-pip
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    run mkdir -p "$WORKSPACE"
    run python3 -m venv "$VENV"
  fi
  [ -n "$PYTHON_BIN" ] || PYTHON_BIN="$VENV/bin/python"
  run "$VENV/bin/python" -m pip install --upgrade pip comfy-cli
  run env VIRTUAL_ENV="$VENV" "$VENV/bin/comfy" --skip-prompt tracking disable || true
  gpu_flag=--nvidia; [ -n "$GPU_LINES" ] || gpu_flag=--cpu
  # VIRTUAL_ENV makes comfy-cli install ComfyUI's dependencies into our venv, not a new one.
  run env VIRTUAL_ENV="$VENV" "$VENV/bin/comfy" --skip-prompt --workspace "$COMFY" install "$gpu_flag"
fi

PY="$(detect_python "$COMFY")"
if [ -z "$PY" ] || { [ "$DRY_RUN" = 0 ] && [ ! -x "$PY" ]; }; then
  die "cannot find the Python ComfyUI runs with; pass --python /path/to/venv/bin/python"
fi
note "ComfyUI's Python: $PY"
if [ -n "${REELSMITH_PIP:-}" ]; then read -r -a PIP <<<"$REELSMITH_PIP"; else PIP=("$PY" -m pip); fi

# ------------------------------------------------------------------------------------------ pack

LINK="$COMFY/custom_nodes/$PACK_LINK_NAME"
if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$PACK_ROOT" ]; then
  echo "unchanged: $LINK -> $PACK_ROOT"
elif [ -e "$LINK" ] && [ "$(cd "$LINK" && pwd -P)" = "$PACK_ROOT" ]; then
  echo "unchanged: the pack is $LINK itself"
elif [ -e "$LINK" ] && [ ! -L "$LINK" ]; then
  die "$LINK exists and is not this pack ($PACK_ROOT); move it away and run again"
else
  run mkdir -p "$COMFY/custom_nodes"
  run ln -sfn "$PACK_ROOT" "$LINK"
fi

# pip runs every time (that is the upgrade); it counts as a change only when the installed set changed.
pip_install() {
  local before after
  before="$("${PIP[@]}" freeze 2>/dev/null || true)"
  echo "+ ${PIP[*]} install $*"
  [ "$DRY_RUN" = 1 ] && return 0
  "${PIP[@]}" install "$@"
  after="$("${PIP[@]}" freeze 2>/dev/null || true)"
  [ "$before" = "$after" ] || CHANGED=$((CHANGED + 1))
}

if [ "$SKIP_PIP" = 1 ]; then
  note "--skip-pip: not installing $PACK_ROOT/requirements.txt"
else
  note "installing the pack's requirements into $PY"
  pip_install --upgrade -r "$PACK_ROOT/requirements.txt"
fi

FAST_STATE=off
if [ "$FAST_PATH" = 1 ]; then
  if cc_at_least_8; then
    FAST_STATE="sageattention (compute capability $MAX_CC)"
    if [ "$SKIP_PIP" = 1 ]; then
      note "--fast-path: would install sageattention (compute capability $MAX_CC); skipped by --skip-pip"
    else
      note "--fast-path: installing sageattention (compute capability $MAX_CC)"
      pip_install --upgrade sageattention
    fi
  else
    FAST_STATE="skipped (needs compute capability >= 8.0, found ${MAX_CC:-no GPU})"
    note "--fast-path: $FAST_STATE"
  fi
fi

# ------------------------------------------------------------------------------------------ config

write_if_changed "$YAML" <<EOF
# Written by Reelsmith's scripts/setup_instance.sh; re-running it rewrites this file.
# ComfyUI reads it through --extra-model-paths-config (see $SERVICE_NAME).
reelsmith:
  base_path: $MODELS_DIR
  is_default: true
  diffusion_models: diffusion_models
  text_encoders: text_encoders
  vae: vae
  loras: loras
  clip_vision: clip_vision
  upscale_models: upscale_models
  checkpoints: checkpoints
  diffusers: diffusers
EOF
if [ "$DRY_RUN" = 0 ]; then
  for sub in diffusion_models text_encoders vae loras diffusers; do
    [ -d "$MODELS_DIR/$sub" ] || run mkdir -p "$MODELS_DIR/$sub"
  done
fi

UNIT_CONTENT="$(cat <<EOF
# Written by Reelsmith's scripts/setup_instance.sh.
[Unit]
Description=ComfyUI with the Reelsmith node pack ($LISTEN_ADDR:$PORT)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$SERVICE_USER
WorkingDirectory=$COMFY
Environment=PYTHONUNBUFFERED=1
ExecStart="$PY" "$COMFY/main.py" --listen $LISTEN_ADDR --port $PORT --extra-model-paths-config "$YAML"
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
)"

if [ "$NO_SYSTEMD" = 1 ]; then
  printf '%s\n' "$UNIT_CONTENT" | write_if_changed "$SERVICE_FILE"
  note "--no-systemd: service file rendered, not installed or started"
else
  command -v systemctl >/dev/null || die "systemctl not found; use --no-systemd and start ComfyUI yourself"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if [ -f "$SERVICE_FILE" ] && cmp -s <(printf '%s\n' "$UNIT_CONTENT") "$SERVICE_FILE"; then
    echo "unchanged: $SERVICE_FILE"
  else
    tmp_unit="$(mktemp)"; printf '%s\n' "$UNIT_CONTENT" >"$tmp_unit"
    run $SUDO install -m 0644 "$tmp_unit" "$SERVICE_FILE"
    rm -f "$tmp_unit"
    run $SUDO systemctl daemon-reload
  fi
  systemctl is-enabled --quiet "$SERVICE_NAME" 2>/dev/null || run $SUDO systemctl enable "$SERVICE_NAME"
  # Restart when anything changed (code, packages, unit) or when it is not running.
  if [ "$CHANGED" -gt 0 ] || ! systemctl is-active --quiet "$SERVICE_NAME" 2>/dev/null; then
    run $SUDO systemctl restart "$SERVICE_NAME"
    note "service $SERVICE_NAME (re)started: journalctl -u $SERVICE_NAME -f"
  else
    echo "unchanged: $SERVICE_NAME running"
  fi
fi

# ------------------------------------------------------------------------------------------ marker

MARKER_CONTENT="$(cat <<EOF
reelsmith_version=$(pack_version)
reelsmith_commit=$(pack_commit)
reelsmith_path=$PACK_ROOT
comfyui_path=$COMFY
comfyui_version=$(comfy_version "$COMFY" || true)
python=$PY
models_dir=$MODELS_DIR
listen=$LISTEN_ADDR
port=$PORT
fast_path=$FAST_STATE
service_file=$SERVICE_FILE
EOF
)"
if [ "$DRY_RUN" = 1 ]; then
  echo "dry run: nothing changed"
  exit 0
fi
if [ -n "$PREVIOUS_MARKER" ] && cmp -s <(printf '%s\n' "$MARKER_CONTENT") "$PREVIOUS_MARKER"; then
  mv -f "$PREVIOUS_MARKER" "$MARKER"
else
  rm -f "$PREVIOUS_MARKER"
  printf '%s\n' "$MARKER_CONTENT" | write_if_changed "$MARKER"
fi

if [ "$CHANGED" = 0 ]; then
  note "nothing changed: already set up ($MARKER)"
else
  note "done ($CHANGED change(s)); state in $MARKER"
fi
cat <<EOF

Next:
  download models:  $PY $PACK_ROOT/scripts/download_models.py wan22-t2v-a14b --models-dir $MODELS_DIR
  render:           $PY $PACK_ROOT/scripts/render.py $PACK_ROOT/workflows/wan22_t2v_480p.json --server http://127.0.0.1:$PORT --out out/
  from your laptop: ssh -N -L $PORT:127.0.0.1:$PORT $SERVICE_USER@<this-host>   then open http://127.0.0.1:$PORT
EOF
