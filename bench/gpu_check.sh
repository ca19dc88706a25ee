#!/usr/bin/env bash
# The prepared GPU check: one command for a machine with a lent CUDA GPU (see bench/README.md).
#
#   bash bench/gpu_check.sh                 # JSON + log under $OUT if set, else bench/results/
#   GPU_BENCH_TIMEOUT=420 bash bench/gpu_check.sh --sections train,straightforward
#
# 1. installs wheels carried in .whl/ (e.g. av, transformers==5.24.0) into /tmp/site, if there are any;
# 2. checks that torch sees a GPU and prints the versions;
# 3. runs `bench/gpu.py --small --device cuda` (tiny shapes on the GPU, seconds: the CUDA code paths),
#    `bench/memory.py --device cuda` (the memory plan against max_memory_allocated) and then
#    `bench/gpu.py` (real size) under a timeout; extra arguments go to the real-size run.
# Exit status: that of the real-size run (124 = timed out; what it printed is in the log).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/results}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's package, installed or not

"$PY" - <<'PY' 2>&1 | tee "$OUT_DIR/gpu_env.txt" || exit 2
import importlib.util, sys
import torch, transformers
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")
for name in ("av", "flash_attn"):
    print(f"{name}: {'importable' if importlib.util.find_spec(name) else 'missing'}")
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA GPU")
print("gpu:", torch.cuda.get_device_name(0))
PY

timeout 90 "$PY" bench/gpu.py --small --device cuda --out "$OUT_DIR/gpu_small_cuda.json" > "$OUT_DIR/gpu_small_cuda.log" 2>&1
echo "small mode on CUDA: exit $? (log: $OUT_DIR/gpu_small_cuda.log)"
tail -n 25 "$OUT_DIR/gpu_small_cuda.log"

# plan-memory against torch.cuda.max_memory_allocated, 2 sizes (LoRA rows need peft: a wheel in .whl/ or installed)
timeout 120 "$PY" bench/memory.py --device cuda --sizes h256,h512 --modes projector,projector-gc,lora-gc \
    --out "$OUT_DIR/memory_cuda.json" > "$OUT_DIR/memory_cuda.log" 2>&1
echo "memory plan on CUDA: exit $? (log: $OUT_DIR/memory_cuda.log)"
tail -n 12 "$OUT_DIR/memory_cuda.log"

timeout "${GPU_BENCH_TIMEOUT:-450}" "$PY" bench/gpu.py --out "$OUT_DIR/gpu.json" "$@" 2>&1 | tee "$OUT_DIR/gpu.log"
rc=${PIPESTATUS[0]}
echo "bench/gpu.py: exit $rc; JSON $OUT_DIR/gpu.json, log $OUT_DIR/gpu.log"
exit "$rc"
