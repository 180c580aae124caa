#!/usr/bin/env bash
# The pipeline bench on one CUDA GPU, in one short run: classification, detection and
# segmentation at 1280x720, JPEG bytes decoded in the model replica, the Predictor in
# half precision and channels-last on CUDA (what it does on any GPU), median of
# VLM_GPU_BENCH_REPEAT runs each. Writes one JSON per task, a summary.json with streams
# per GPU at 30 fps, and prints the summary.
#
#   deploy/gpu/bench.sh [OUT_DIR]            (default docs/bench/gpu)
#
# Environment: VLM_GPU_BENCH_FRAMES (600), VLM_GPU_BENCH_REPEAT (3),
# VLM_GPU_BENCH_FRAME_SIZE (1280x720), VLM_GPU_BENCH_TASKS ("classification detection
# segmentation"), VLM_GPU_BENCH_ALLOW_CPU=1 to smoke-test the script where torch sees no
# GPU, VLM_VENV to use a venv already made. It installs only what `make test` installs
# (deploy/local/bootstrap.sh). Like `vlm bench`, it leaves the local stack running:
# `vlm local down` stops it.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="${1:-docs/bench/gpu}"
frames="${VLM_GPU_BENCH_FRAMES:-600}"
repeat="${VLM_GPU_BENCH_REPEAT:-3}"
size="${VLM_GPU_BENCH_FRAME_SIZE:-1280x720}"
tasks="${VLM_GPU_BENCH_TASKS:-classification detection segmentation}"

venv="${VLM_VENV:-$(bash deploy/local/bootstrap.sh | tail -n 1)}"
export PATH="$venv/bin:$PATH" RAY_USAGE_STATS_ENABLED=0
mkdir -p "$out"

python - "$out/device.json" <<'PY'
import json, os, sys

import torch

cuda = torch.cuda.is_available()
if not cuda and os.environ.get("VLM_GPU_BENCH_ALLOW_CPU") != "1":
    sys.exit(
        f"deploy/gpu/bench.sh: torch {torch.__version__} sees no CUDA device; run it on a GPU machine "
        "(VLM_GPU_BENCH_ALLOW_CPU=1 smoke-tests it on the CPU)"
    )
info = {
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name(0) if cuda else "cpu",
}
with open(sys.argv[1], "w") as fh:
    json.dump(info, fh, indent=2)
print(f"device: {info['device']} (torch {info['torch']}, CUDA {info['cuda']})")
PY

reports=()
for task in $tasks; do
  report="$out/$task-$size.json"
  vlm bench pipeline --task "$task" --frames "$frames" --repeat "$repeat" --frame-size "$size" \
    --model-input encoded --latency-load 0.5 --json "$report"
  reports+=("$report")
done

python - "$out/summary.json" "$out/device.json" "${reports[@]}" <<'PY'
import json, sys

summary_path, device_path, *reports = sys.argv[1:]
rows = []
for path in reports:
    with open(path) as fh:
        report = json.load(fh)
    s = report["summary"]
    run = report["runs"][0]
    rows.append(
        {
            "task": run["task"],
            "model": run["model"],
            "frame_size": run["frame_size"],
            "raw_fps": s["raw_fps"],
            "pipeline_fps": s["pipeline_fps"],
            "ratio": s["ratio"],
            # A 30 fps camera needs 30 frames a second of the pipeline's sustained rate.
            "streams_at_30fps": {k: round(v / 30, 1) for k, v in s["pipeline_fps"].items()},
            "command": report["command"],
        }
    )
with open(device_path) as fh:
    device = json.load(fh)
with open(summary_path, "w") as fh:
    json.dump({"device": device, "tasks": rows}, fh, indent=2)
print(f"{'task':<16}{'model':<34}{'raw fps':>10}{'pipeline fps':>14}{'streams@30':>12}")
for r in rows:
    print(
        f"{r['task']:<16}{r['model']:<34}{r['raw_fps']['median']:>10.1f}"
        f"{r['pipeline_fps']['median']:>14.1f}{r['streams_at_30fps']['median']:>12.1f}"
    )
PY
