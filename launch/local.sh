#!/usr/bin/env bash
# Single-node launcher: `dtrain train` on one rank per visible GPU, or on N CPU ranks, of this machine.
# A thin wrapper around `python -m dtrain launch` (dtrain/launch.py), for symmetry with mpirun.sh and
# slurm.sbatch; every option is dtrain launch's.
#
#   launch/local.sh -n auto -- --model cnn                   # one rank per CPU core
#   launch/local.sh -n auto --device cuda -- --model resnet  # one rank per visible GPU
#   launch/local.sh -n 4 --dry-run -- --epochs 1             # print the mpiexec command only
set -euo pipefail

python="${PYTHON:-python3}"
case "${1:-}" in
  -h|--help)
    cat <<'TXT'
usage: launch/local.sh -n auto|N [--device cpu|cuda] [--mpiexec PATH] [--threads T]
                       [--bind none|core|socket|numa] [--dry-run] [-- DTRAIN_TRAIN_ARGS...]

Runs `$PYTHON -m dtrain launch "$@"` (PYTHON defaults to python3: the Python that has dtrain
installed). -n auto starts one rank per visible GPU with --device cuda (CUDA_VISIBLE_DEVICES, else
CuPy, else nvidia-smi -L; no GPU is an error, exit 2), else one rank per usable CPU core.
--dry-run is a dry run: it prints the exact mpiexec command (shell-quoted, one line) and exits.
Everything after `--` goes to `dtrain train`. The options in full:

TXT
    exec "$python" -m dtrain launch --help ;;
esac
exec "$python" -m dtrain launch "$@"
