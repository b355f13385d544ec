#!/usr/bin/env bash
# Every GPU figure of issue 21 in one run (about 9 minutes of an H100/H200), for a session that is
# lent a GPU machine for a few minutes. Run from the repository root:
#
#   bash mf_backend/bench/gpu_matrix.sh [OUT_DIR]          # default OUT_DIR: $OUT, else ./gpu-figures
#
# The workplace's GPU image has python3 with torch but not diffusers, and cannot download: carry the
# wheels. Here, once:  echo /.gpu-wheels/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps -d .gpu-wheels diffusers==0.42.1 importlib_metadata
# then run with carry [".gpu-wheels"]; the script installs them into /tmp/mf-deps (no network).
#
# Writes OUT_DIR/env.txt (GPU, torch, cuDNN), OUT_DIR/matrix.jsonl (one JSON record per variant:
# frames/min, seconds per stage, peak GiB, TFLOP and MFU) and OUT_DIR/matrix.txt (the table), and
# prints the table. Variants (bench speed's MATRIX, most wanted first; the time budget skips from
# the end): the new default, the default before issue 21 (still with the single-token cross-attention,
# a model change), checkpoint hires / down (the planned <= 16 GB preset) / down0,down1, SDPA cuDNN and
# flash, compile=blocks (alone, with ckpt=down, with CUDA graphs), channels_last, low-memory, the
# batching switch alone, the baseline with every switch off, compile=full. FLOPs (for MFU) are
# counted on the CPU once per set of sampler switches (4 sets), after the timed runs that need them.
set -u -o pipefail
OUT_DIR=${1:-${OUT:-gpu-figures}}
BUDGET=${BUDGET:-480}   # seconds for the whole matrix (the device limit is 600 s per command)
mkdir -p "$OUT_DIR"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1

if ! $PY -c "import diffusers" 2>/dev/null; then
    if ls .gpu-wheels/*.whl >/dev/null 2>&1; then
        $PY -m pip install --quiet --no-index --no-deps --target /tmp/mf-deps .gpu-wheels/*.whl
        export PYTHONPATH="/tmp/mf-deps:${PYTHONPATH:-}"
    else
        echo "diffusers is missing and no .gpu-wheels/ was carried (see the top of this script)" >&2
        exit 2
    fi
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} | tee "$OUT_DIR/env.txt"
$PY -c "import mf_backend.bench.speed, mf_backend.edit" || { echo "mf_backend does not import here" >&2; exit 3; }

# CONFIG=tiny FRAMES=2 SIZE=64 STEPS=2 PRECISION=fp32 runs the same script on a CPU (a dry run)
$PY -m mf_backend bench speed --config "${CONFIG:-official}" --frames "${FRAMES:-24}" --size "${SIZE:-512}" \
    --steps "${STEPS:-50}" --precision "${PRECISION:-bf16}" --matrix --time-budget "$BUDGET" --json \
    | tee "$OUT_DIR/matrix.jsonl"
$PY - "$OUT_DIR" <<'EOF'
import json, sys
from mf_backend.bench.speed import HEADER, _row
out = sys.argv[1]
rows = [json.loads(x) for x in open(f"{out}/matrix.jsonl") if x.startswith("{")]
table = "\n".join([HEADER] + [_row(r) for r in rows])
open(f"{out}/matrix.txt", "w").write(table + "\n")
print(table)
EOF
