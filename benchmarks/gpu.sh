#!/usr/bin/env bash
# The GPU benchmarks in one command, for a GPU machine without network access that must be done
# within 10 minutes (the script ends within 9 min 40 s; HAQ_GPU_SECONDS changes that).
#
# Such a machine may have PyTorch, pandas, scipy, scikit-learn, matplotlib, PyYAML and tqdm but not
# stable-baselines3, gymnasium or Ray. On a machine with network, from the repository root, once:
#
#     pip install --target .devdeps --no-deps stable-baselines3==2.9.2 gymnasium==1.4.0 farama-notifications
#     # Ray for --workers 2 (75 MiB as a wheel: its Java jars and libraries the engine does not use are left out)
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 -d /tmp/ray ray==2.60.0
#     python benchmarks/slim_wheel.py /tmp/ray/ray-2.60.0-*.whl .whl \
#         ray/jars ray/rllib ray/data ray/serve ray/tune ray/train ray/llm
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_17_x86_64 -d .whl jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
#         referencing==0.37.0 rpds-py==0.30.0
#
# then copy the repository with .devdeps and .whl to the GPU machine and run `bash benchmarks/gpu.sh`.
#
# It writes into $OUT (default benchmarks/results): machine.txt, gpu.log (every step's output), the
# episode benchmark of the gpu-mbv2 preset eager and with --compile (3 rounds; JSON), and a 40-episode
# default search on the GPU: eager with 1 and with 2 Ray workers sharing the GPU, and compiled (the
# CUDA default) with 1 (JSON). About 7 minutes on one H200.
# Each step has its own time limit, cut to what is left before the script's deadline, so a slow
# step costs its own numbers and the later steps', not the earlier ones'.
# `HAQ_GPU_PRESET=cpu-mbv2-tiny HAQ_SEARCH_DEVICE=cpu OUT=/tmp/x bash benchmarks/gpu.sh`
# rehearses the plumbing on a machine without a GPU (with HAQ_WHEELS=DIR holding a Ray wheel slimmed
# for that machine's Python: the .whl folder's are for the GPU machine's Python 3.12).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PRESET=${HAQ_GPU_PRESET:-gpu-mbv2}
SEARCH_DEVICE=${HAQ_SEARCH_DEVICE:-cuda}
PY=${PYTHON:-python3}
DEADLINE=$(( $(date +%s) + ${HAQ_GPU_SECONDS:-580} ))
export PYTHONPATH="$PWD:$PWD/.devdeps${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HAQ_CACHE_DIR=${HAQ_CACHE_DIR:-/tmp/haq-cache}
mkdir -p "$OUT"
LOG="$OUT/gpu.log"

step() {  # step NAME SECONDS COMMAND...: run with a limit (cut to the deadline), log, never stop the script
  local name=$1 limit=$2 left t0 rc
  shift 2
  left=$(( DEADLINE - $(date +%s) ))
  (( limit > left )) && limit=$left
  if (( limit < 10 )); then
    echo "== $name: skipped, ${left}s left before the deadline" | tee -a "$LOG"
    return
  fi
  echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$LOG"
  t0=$(date +%s)
  timeout "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  nproc
  "$PY" -c "import platform, torch, stable_baselines3, gymnasium; print(platform.python_version(), torch.__version__,
torch.cuda.is_available() and torch.cuda.get_device_name(0), 'sb3', stable_baselines3.__version__,
'gymnasium', gymnasium.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

# the agent's update against SB3's on this torch (its functional Adam's signature moves between versions)
step agent-check 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_search.py -k "sb3 or predictions"
step episode-eager 150 "$PY" benchmarks/episode.py --preset "$PRESET" --json "$OUT/episode-$PRESET.json"
# the default search on the GPU, then the same with two Ray workers sharing it
step search-1worker 90 "$PY" benchmarks/search.py --device "$SEARCH_DEVICE" --episodes 40 --no-compile \
  --json "$OUT/search-$SEARCH_DEVICE-40ep-1worker.json"
WHEELS=${HAQ_WHEELS:-.whl}  # Ray and what it needs that the image lacks
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  step ray-install 40 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
  step search-2workers 100 "$PY" benchmarks/search.py --device "$SEARCH_DEVICE" --episodes 40 --workers 2 \
    --no-compile --json "$OUT/search-$SEARCH_DEVICE-40ep-2workers.json"
fi
# the compilation of four graphs (float and quantized, training and validation) takes 80-100 s
step episode-compiled 240 "$PY" benchmarks/episode.py --preset "$PRESET" --compile --repeats 3 \
  --json "$OUT/episode-$PRESET-compiled.json"
step search-compiled 120 "$PY" benchmarks/search.py --device "$SEARCH_DEVICE" --episodes 40 --compile \
  --json "$OUT/search-$SEARCH_DEVICE-40ep-compiled.json"
tail -n 80 "$LOG"
ls -l "$OUT"
