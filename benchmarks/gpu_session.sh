#!/usr/bin/env bash
# Everything issue 6 needs from a GPU, as one prepared command for a session that is lent one
# (the device tool gives 15 minutes in all, start included; this script stays under 10).
#
# The device image has PyTorch, pandas, scipy, scikit-learn, matplotlib, PyYAML and tqdm but no
# stable-baselines3 or gymnasium, and no network: carry them as pure-Python packages. Here, once:
#
#     pip install --target .devdeps --no-deps stable-baselines3==2.9.2 gymnasium==1.4.0 farama-notifications
#
# then, through the device tool, from the repository root:
#
#     run(command="bash benchmarks/gpu_session.sh", carry=[".devdeps"], timeout_s=600)
#
# It writes into $OUT (what comes back) the episode benchmark of the gpu-mbv2 preset, eager and
# with --compile (JSON and log), and the machine's description. (`--workers 2` on one GPU needs
# Ray, which is not on the image and too large to carry.)
# Each step has its own time limit, so a slow step costs its own numbers, not the others'.
# `HAQ_GPU_PRESET=cpu-mbv2-tiny OUT=/tmp/x bash benchmarks/gpu_session.sh`
# rehearses the plumbing on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PRESET=${HAQ_GPU_PRESET:-gpu-mbv2}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD:$PWD/.devdeps${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HAQ_CACHE_DIR=${HAQ_CACHE_DIR:-/tmp/haq-cache}
mkdir -p "$OUT"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, never stop the script
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 25
  echo "== $name: exit ${PIPESTATUS[0]}"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import platform, torch, stable_baselines3, gymnasium; print(platform.python_version(), torch.__version__,
torch.cuda.is_available() and torch.cuda.get_device_name(0), 'sb3', stable_baselines3.__version__,
'gymnasium', gymnasium.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

# the agent's update against SB3's on this torch (its functional Adam's signature moves between versions)
step agent-check 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_search.py -k "sb3 or predictions"
step episode-eager 200 "$PY" benchmarks/episode.py --preset "$PRESET" --json "$OUT/episode-$PRESET.json"
step episode-compiled 300 "$PY" benchmarks/episode.py --preset "$PRESET" --compile \
  --json "$OUT/episode-$PRESET-compiled.json"
ls -l "$OUT"
