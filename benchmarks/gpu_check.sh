#!/usr/bin/env bash
# The GPU proof of dtrain in one run, for a lent GPU machine (no internet there): the GPU tests and the whole
# suite with them enabled, `dtrain train --device cuda` for the MLP, CNN and transformer in fp32 and bf16,
# DDP under mpiexec -n 2 and -n 4 with the ranks sharing the GPU (pinned staging, CUDA-aware MPI when the
# library is, NCCL when CuPy has it) compared with the same job on the CPU, and the GPU benchmarks (the CuPy
# training step against PyTorch CUDA eager, all-reduce of device buffers).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--quick] [--only REGEX] [--budget SECONDS] [--out DIR]
#
#   --dry-run   print every step's command and run none (anywhere; CI checks it)
#   --quick     the GPU test files instead of the whole suite
#   --only RE   only the steps whose names match the extended regex RE (the names --dry-run shows); with a
#               10-minute limit per device call: `--quick` in one call, `--only '^suite$'` in the next
#   --budget S  steps that would start after S seconds are skipped and say so (default 540: one device call)
#   --out DIR   gpu_check.md (one row per step), gpu_check.log (every step's output), gpu_step.md and
#               gpu_allreduce.md go there (default: $OUT when set, else gpu-check-out); runs' own files go
#               to a scratch folder, so that DIR holds at most those four files
#
# Wheels carried in .whl/ (mpich for mpiexec, pytest-mpi, ...) are installed into /tmp/site first; fetch them
# beforehand on a machine with PyPI, for the device's Python 3.12:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl mpich pytest-mpi
# Every step has its own timeout; a failing step is recorded and the next one runs; the exit status is 1
# when any step failed. Run from the repository root.
set -u

DRY=0
QUICK=0
ONLY=
BUDGET=540
OUT_DIR=${OUT:-gpu-check-out}
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --quick) QUICK=1 ;;
        --only) ONLY=$2; shift ;;
        --budget) BUDGET=$2; shift ;;
        --out) OUT_DIR=$2; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
if [ "$DRY" = 1 ]; then
    RUNS=/tmp/gpu_check_runs.XXXXXX  # shown, never created
else
    RUNS=$(mktemp -d /tmp/gpu_check_runs.XXXXXX)
    mkdir -p "$OUT_DIR"
    OUT_DIR=$(cd "$OUT_DIR" && pwd)
fi
LOG=$OUT_DIR/gpu_check.log
SUMMARY=$OUT_DIR/gpu_check.md
START=$(date +%s)
FAILED=0
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 0 ]; then
    : >"$LOG"
    printf '# GPU check\n\n| step | status | seconds | command |\n|---|---|---:|---|\n' >"$SUMMARY"
fi

# step NAME TIMEOUT COMMAND: run COMMAND (a bash string) with a timeout, its output appended to the log and
# its exit status and time to the summary; skipped once the budget is spent
step() {
    local name=$1 limit=$2 cmd=$3
    if [ -n "$ONLY" ] && ! [[ $name =~ $ONLY ]]; then
        return 0
    fi
    if [ "$DRY" = 1 ]; then
        printf '[dry-run] %-26s (timeout %4ss) %s\n' "$name" "$limit" "$cmd"
        return 0
    fi
    local now status t0
    now=$(date +%s)
    if [ $((now - START + limit / 4)) -gt "$BUDGET" ]; then
        # shellcheck disable=SC2016  # the backticks are Markdown, not a command substitution
        printf '| %s | skipped: time budget (%ss) spent | 0 | `%s` |\n' "$name" "$BUDGET" "$cmd" >>"$SUMMARY"
        echo "== $name: skipped, budget spent" | tee -a "$LOG"
        return 0
    fi
    echo "== $name: $cmd" | tee -a "$LOG"
    t0=$(date +%s)
    timeout -k 10 "$limit" bash -c "$cmd" >>"$LOG" 2>&1
    status=$?
    local word=passed
    if [ $status -eq 124 ] || [ $status -eq 137 ]; then word="TIMED OUT after ${limit}s"; FAILED=1
    elif [ $status -ne 0 ]; then word="FAILED (exit $status)"; FAILED=1; fi
    # shellcheck disable=SC2016
    printf '| %s | %s | %s | `%s` |\n' "$name" "$word" "$(($(date +%s) - t0))" "$cmd" >>"$SUMMARY"
    echo "== $name: $word" | tee -a "$LOG"
}

# -- setup: carried wheels, then what the machine has ---------------------------------------------------------
if [ -d "$REPO/.whl" ]; then
    step wheels 120 "$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $REPO/.whl/*.whl"
    export PYTHONPATH="$PYTHONPATH:/tmp/site" PATH="/tmp/site/bin:$PATH"
fi
step env 60 "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c 'import cupy, numpy; print(\"cupy\", cupy.__version__, \"numpy\", numpy.__version__, \"devices\", cupy.cuda.runtime.getDeviceCount())'; $PY -m dtrain info"
step mpi 60 "mpiexec -n 2 $PY -c 'from mpi4py import MPI; print(MPI.COMM_WORLD.rank, MPI.Get_library_version().splitlines()[0])'"

# -- tests ----------------------------------------------------------------------------------------------------
GPU_TESTS="tests/autograd/test_gpu.py tests/optim/test_optim_gpu.py tests/distributed/test_gpu_dist.py"
step gpu-tests 240 "cd $REPO && $PY -m pytest -q -p no:cacheprovider $GPU_TESTS"
if [ "$QUICK" = 0 ]; then
    step suite 420 "cd $REPO && $PY -m pytest -q -p no:cacheprovider -x tests"
fi

# -- training on the GPU: fp32 and bf16 -----------------------------------------------------------------------
for model in mlp cnn transformer; do
    for precision in fp32 bf16; do
        step "train-$model-$precision" 120 \
            "$PY -m dtrain train --device cuda --model $model --precision $precision --max-steps 60 --no-monitor --out $RUNS/train-$model-$precision"
    done
done

# -- DDP with the ranks sharing the GPU, against the same job on the CPU ---------------------------------------
COMPARE="$PY $REPO/benchmarks/gpu_check_compare.py"
JOB="-m dtrain train --model mlp --epochs 2 --seed 1 --no-monitor"
AWARE=0
if [ "$DRY" = 0 ] && $PY -c 'import sys; from dtrain.distributed.gpu import cuda_aware_mpi; sys.exit(0 if cuda_aware_mpi()[0] else 1)' 2>/dev/null; then
    AWARE=1
fi
NCCL=0
if [ "$DRY" = 0 ] && $PY -c 'from cupy.cuda import nccl' 2>/dev/null; then NCCL=1; fi
for n in 2 4; do
    step "ddp-$n-cpu" 180 "mpiexec -n $n $PY $JOB --out $RUNS/ddp-$n-cpu"
    step "ddp-$n-cuda-staging" 180 \
        "DTRAIN_CUDA_AWARE_MPI=0 mpiexec -n $n $PY $JOB --device cuda --out $RUNS/ddp-$n-staging && $COMPARE $RUNS/ddp-$n-cpu $RUNS/ddp-$n-staging"
    if [ "$AWARE" = 1 ] || [ "$DRY" = 1 ]; then
        step "ddp-$n-cuda-aware" 180 \
            "DTRAIN_CUDA_AWARE_MPI=1 mpiexec -n $n $PY $JOB --device cuda --out $RUNS/ddp-$n-aware && $COMPARE $RUNS/ddp-$n-cpu $RUNS/ddp-$n-aware"
    fi
    if [ "$NCCL" = 1 ] || [ "$DRY" = 1 ]; then
        step "ddp-$n-cuda-nccl" 180 \
            "mpiexec -n $n $PY $JOB --device cuda --allreduce nccl --out $RUNS/ddp-$n-nccl && $COMPARE $RUNS/ddp-$n-cpu $RUNS/ddp-$n-nccl"
    fi
done

# -- benchmarks -----------------------------------------------------------------------------------------------
step bench-gpu-step 240 "$PY $REPO/benchmarks/gpu_step.py --out $OUT_DIR"
for n in 2 4; do
    step "bench-allreduce-$n-staging" 120 \
        "DTRAIN_CUDA_AWARE_MPI=0 mpiexec -n $n $PY -m dtrain.bench.gpu_allreduce --label 'pinned staging' --out $OUT_DIR"
    if [ "$AWARE" = 1 ] || [ "$DRY" = 1 ]; then
        step "bench-allreduce-$n-aware" 120 \
            "DTRAIN_CUDA_AWARE_MPI=1 mpiexec -n $n $PY -m dtrain.bench.gpu_allreduce --label 'CUDA-aware MPI' --out $OUT_DIR"
    fi
done

if [ "$DRY" = 1 ]; then
    exit 0
fi
rm -rf "$RUNS"
echo "summary: $SUMMARY"
cat "$SUMMARY"
exit $FAILED
