"""Data-parallel training throughput: dtrain DistributedDataParallel against PyTorch DDP, 1 and 2 ranks.

What is measured
    Global samples per second of data-parallel training of the MLP 784-1024-1024-10 (ReLU, 1,863,690
    float32 parameters, 7.1 MiB of gradients), softmax cross-entropy, SGD lr 0.01 momentum 0.9, batch 128
    PER RANK (weak scaling), on synthetic inputs (standard normal) and random labels, one BLAS thread
    per rank, at 1 and 2 ranks. Implementations, all in the same ``mpiexec`` launch, one after the other:

    * ``dtrain``: ``dist.DistributedDataParallel(model, bucket_cap_mb=25, overlap=True, algorithm="ring")``,
      ``loss = F.cross_entropy(ddp(x), y); opt.zero_grad(); loss.backward(); opt.step()``;
    * ``dtrain overlap off``: the same with ``overlap=False`` (every bucket all-reduced after backward);
    * ``dtrain shm``: the same with ``algorithm="shm"`` (every rank on one node: the buckets are summed
      through one MPI shared-memory window instead of the ring's messages);
    * ``dtrain 1 MB buckets``: ``overlap=True, bucket_cap_mb=1`` (``--small-bucket-mb``; the whole
      gradient fits one 25 MB bucket, so the default cannot overlap anything on this model);
    * ``dtrain train --zero``: ``ZeroRedundancyOptimizer(..., algorithm="shm")`` driven by ``Trainer.train_step`` with
      the seams the command line builds (``ZeroGradientSync``), so the table has the command line's own step;
    * ``torch``: ``torch.nn.parallel.DistributedDataParallel`` with its defaults (gloo backend, 25 MB
      buckets, 1 MB first bucket), the same loop, ``torch.set_num_threads(1)``. Its process group is
      initialised from env (MASTER_ADDR=127.0.0.1, a free MASTER_PORT chosen by rank 0) with rank and
      world size from mpi4py's COMM_WORLD. Skipped when torch does not import;
    * ``reference``: the same dtrain loop on the bare model, no DDP: at 2 ranks each rank trains alone on
      its own batches, so its scaling shows what sharing the machine costs before any communication
      (the ceiling for any data-parallel implementation here).

    Every implementation starts from the same weights (dtrain's initial ``state_dict``) and sees the
    same batches (``--batches`` distinct batches per rank, seeded by rank). Before timing, three steps of
    each are compared: the dtrain DDP variants must agree bitwise (at 1 rank with the bare model too)
    and PyTorch DDP closely (loss and parameters; at 2 ranks this checks that both average the same).
    Timing: ``--warmup`` steps each, then ``--repeats`` interleaved repeats of ``--steps`` steps per
    implementation (the order rotates between repeats); every repeat starts at a barrier and its time
    is the slowest rank's; samples/s = world size * 128 * steps / median repeat time.
    Weak-scaling efficiency = samples/s(2 ranks) / (2 * samples/s(1 rank)).

    Then, for the dtrain variants, the time split of a step (mean over ``--split-steps`` steps and ranks):
    forward+loss, the local part of backward, ``ddp.finish`` (the end-of-backward wait for the buckets and
    the write of the averaged gradients, which the engine runs as a callback at the end of
    ``loss.backward()``; read from ``ddp.last_finish_s``), and zero_grad+step. An all-reduce of the
    gradient's size alone (ring on the main thread, ring through the communicator's worker thread,
    MPI_Allreduce, shm) and the least data movement any all-reduce of it needs on one node (the
    shared-memory floor) give the communication cost for comparison, and the ranks' entry times into
    ``ddp.finish`` (end of backward minus ``last_finish_s``; one monotonic clock per machine) separate
    waiting for the other rank from waiting for the all-reduce. At 2 ranks rank 0 is
    also profiled with cProfile for ``--profile-steps`` steps of the default dtrain variant.

    Finally every rank hashes its parameters (SHA-256 of the raw bytes): the ranks of each
    implementation must hold identical parameters, and the dtrain variants identical ones too.

How to run
    python benchmarks/throughput.py              # = dtrain bench throughput: runs mpiexec -n 1 and -n 2 itself
    python benchmarks/throughput.py --steps 20 --repeats 3 --out /tmp/res
    mpiexec -n 2 dtrain bench throughput --out /tmp/res   # just the world it is launched in

Outputs ``throughput.md`` (tables, time split, profile, checks, machine, exact command) and
``throughput.csv`` in ``--out`` (default a fresh bench-results/DATE-TIME/). No assertion is made on timings; the
equivalence and checksum checks are reported (and make the exit status non-zero when they fail).
The time split and the profile live in :mod:`dtrain.bench.throughput_split`, the report in
:mod:`dtrain.bench.throughput_report`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .machine import OtherLoad, load_avg, mpi_library
from .peers import CycledStep, checksum, import_torch, setup_torch_gloo, slowest, torch_twin_of
from .ranks import launch_worker, under_mpiexec
from .report import OUT_HELP, command_line, default_out
from .throughput_report import summarize, throughput_table, write_outputs
from .throughput_split import BATCH, allreduce_alone, profile_steps, shared_memory_floor, time_split

HELP = "DDP training throughput at 1 and 2 ranks: dtrain variants vs PyTorch DDP, step time split, profile"

WIDTHS = (784, 1024, 1024, 10)
LR = 0.01
MOMENTUM = 0.9
CHECK_STEPS = 3


@dataclass(frozen=True)
class Variant:
    """One benchmarked implementation."""

    key: str
    label: str
    lib: str  # "dtrain" | "torch" | "local" (dtrain without DDP: the machine's ceiling)
    overlap: bool = True
    bucket_mb: float = 25.0
    algorithm: str = "ring"
    zero: bool = False  # ZeroRedundancyOptimizer on the bare model instead of DDP + SGD
    trainer: bool = False  # through Trainer.train_step with the seam `dtrain train` builds (--zero: ZeroGradientSync)


def variants(small_bucket_mb: float, with_torch: bool) -> list[Variant]:
    out = [Variant("dtrain", "dtrain DDP, overlap on (25 MB buckets)", "dtrain", True, 25.0),
           Variant("dtrain_no_overlap", "dtrain DDP, overlap off", "dtrain", False, 25.0)]
    out.append(Variant("dtrain_shm", "dtrain DDP, overlap on, shm (buckets in a shared window, 25 MB)", "dtrain",
                       True, 25.0, "shm"))
    out.append(Variant("dtrain_zero_shm", "dtrain ZeRO-1, shm (gradients and parameters in a shared window; no DDP)",
                       "dtrain", algorithm="shm", zero=True))
    out.append(Variant("dtrain_trainer_zero_shm", "dtrain train --zero --allreduce shm (Trainer.train_step, its votes "
                       "and checks)", "dtrain", algorithm="shm", zero=True, trainer=True))
    if small_bucket_mb > 0:
        out.append(Variant("dtrain_small_buckets", f"dtrain DDP, overlap on, {small_bucket_mb:g} MB buckets",
                           "dtrain", True, small_bucket_mb))
    if with_torch:
        out.append(Variant("torch", "PyTorch DDP (gloo, defaults)", "torch"))
    out.append(Variant("local", "reference: no DDP, each rank trains alone (no communication)", "local"))
    return out


def make_mlp():
    from dtrain import nn

    layers = []
    for i in range(len(WIDTHS) - 1):
        layers.append(nn.Linear(WIDTHS[i], WIDTHS[i + 1]))
        if i < len(WIDTHS) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_batches(rank: int, seed: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng([seed, rank])
    return [(rng.standard_normal((BATCH, WIDTHS[0]), dtype=np.float32),
             rng.integers(0, WIDTHS[-1], BATCH).astype(np.int64)) for _ in range(count)]


class DtrainStepper(CycledStep):
    """dtrain DDP: ``F.cross_entropy(ddp(x), y)``, zero_grad, backward (averaged gradients), step."""

    def __init__(self, var: Variant, state: dict, batches):
        import dtrain as dt
        import dtrain.distributed as dist
        import dtrain.nn.functional as F
        from dtrain import optim

        self.model = make_mlp()
        self.model.load_state_dict(state)
        if var.lib == "local" or var.zero:  # the bare model: no hooks (ZeRO averages in its step)
            self.ddp = self.model
        else:
            self.ddp = dist.DistributedDataParallel(self.model, bucket_cap_mb=var.bucket_mb, overlap=var.overlap,
                                                    algorithm=var.algorithm)
        if var.zero:
            self.opt = dist.ZeroRedundancyOptimizer(self.model.parameters(), optim.SGD, algorithm=var.algorithm,
                                                    lr=LR, momentum=MOMENTUM)
        else:
            self.opt = optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.batches = [(dt.tensor(x), y) for x, y in batches]
        self.net, self.loss_fn = self.ddp, F.cross_entropy

    def params(self) -> list[np.ndarray]:
        return [np.asarray(p.data) for p in self.model.parameters()]

    def n_buckets(self) -> int:
        return len(getattr(self.ddp, "buckets", ()))


class TrainerStepper(DtrainStepper):
    """The ZeRO variant through ``Trainer.train_step`` with the seams ``dtrain train --zero`` builds (ZeroGradientSync,
    MPICollectives): the command line's step, with its non-finite votes and checks, on the same batches."""

    def __init__(self, var: Variant, state: dict, batches):
        from dtrain.data import ArrayDataset, DataLoader
        from dtrain.distributed import get_world
        from dtrain.models import loss_and_accuracy
        from dtrain.train import ReportOptions, Trainer
        from dtrain.train.ddp_sync import MPICollectives
        from dtrain.train.zero_sync import ZeroGradientSync

        super().__init__(var, state, batches)
        comm = get_world()
        sync = ZeroGradientSync(comm)
        sync.attach(self.opt)
        loss_fn, correct_fn = loss_and_accuracy("classification")
        data = ArrayDataset(np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]))
        self.trainer = Trainer(self.model, self.opt, DataLoader(data, batch_size=BATCH), loss_fn=loss_fn,
                               correct_fn=correct_fn, sync=sync, collectives=MPICollectives(comm),
                               report=ReportOptions(monitor=False, progress=False))
        self.arrays = batches

    def step(self, i: int):
        x, y = self.arrays[i % len(self.arrays)]
        return self.trainer.train_step(x, y)

    def loss_value(self, i: int) -> float:
        return self.step(i)[0] / BATCH  # train_step returns the summed loss

    def keep_pace(self, steps: int) -> None:
        """The steps the others take in their time split (5 settling + ``steps``), untimed: every implementation
        has then run the same steps when the checksums are compared."""
        for i in [*range(5), *range(steps)]:  # the same batches as time_split's settling steps, then its steps
            self.step(i)


class TorchStepper(CycledStep):
    """PyTorch DDP twin: same module tree and parameter names, dtrain's initial weights."""

    def __init__(self, torch, state: dict, batches):
        self.torch = torch
        self.model = torch_twin_of(torch, make_mlp())
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]
        self.net, self.loss_fn = self.ddp, torch.nn.functional.cross_entropy

    def params(self) -> list[np.ndarray]:
        return [p.detach().numpy() for p in self.model.parameters()]

    def n_buckets(self) -> None:
        return None  # torch's reducer decides (first bucket 1 MB, then bucket_cap_mb)


def check_equivalence(steppers: dict, cw) -> dict:
    """CHECK_STEPS steps of every implementation on the same batches: dtrain variants must agree bitwise,
    torch closely (its summation order differs)."""
    losses = {k: [s.loss_value(i) for i in range(CHECK_STEPS)] for k, s in steppers.items()}
    params = {k: s.params() for k, s in steppers.items()}
    keys = list(steppers)
    ref = keys[0]
    out = {"losses": losses, "dtrain_bitwise": True, "torch_max_abs_param_diff": None,
           "torch_max_rel_loss_diff": None, "passed": True}
    for k in keys[1:]:
        if k == "local" and cw.size > 1:  # each rank trains on its own batches: nothing to compare
            continue
        if k == "torch":
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(params[ref], params[k]))
            rel = max(abs(a - b) / abs(b) for a, b in zip(losses[ref], losses[k]))
            diff, rel = slowest(cw, diff), slowest(cw, rel)
            out["torch_max_abs_param_diff"], out["torch_max_rel_loss_diff"] = diff, rel
            if not (diff < 1e-4 and rel < 1e-4):
                out["passed"] = False
        else:
            same = all(np.array_equal(a, b) for a, b in zip(params[ref], params[k])) and losses[ref] == losses[k]
            if not all(cw.allgather(same)):
                out["dtrain_bitwise"] = False
                out["passed"] = False
    return out


def time_variants(steppers: dict, cw, steps: int, repeats: int) -> dict[str, list[float]]:
    """Interleaved repeats (order rotated each repeat); a repeat's time is the slowest rank's."""
    keys = list(steppers)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for rep in range(repeats):
        shift = rep % len(keys)
        for k in keys[shift:] + keys[:shift]:
            s = steppers[k]
            cw.Barrier()
            t0 = time.perf_counter()
            for i in range(steps):
                s.step(i)
            times[k].append(slowest(cw, time.perf_counter() - t0))
    return times


def _build_steppers(args, cw) -> tuple[list[Variant], dict, object, str | None, int]:
    """Every implementation from the same initial weights and batches; torch (or why not) and the size."""
    import dtrain as dt

    torch, torch_error = import_torch(distributed=True) if not args.no_torch else (None, "excluded by --no-torch")
    if torch is not None:
        gloo_error = setup_torch_gloo(cw)
        if gloo_error:
            torch, torch_error = None, gloo_error
    dt.manual_seed(args.seed)
    state = {k: np.array(v) for k, v in make_mlp().state_dict().items()}
    batches = make_batches(cw.rank, args.seed, args.batches)
    vars_ = variants(args.small_bucket_mb, torch is not None)
    steppers = {v.key: TorchStepper(torch, state, batches) if v.lib == "torch" else
                (TrainerStepper if v.trainer else DtrainStepper)(v, state, batches) for v in vars_}
    return vars_, steppers, torch, torch_error, int(sum(v.size for v in state.values()))


def _throughput_records(vars_, steppers: dict, cw, args) -> list[dict]:
    """Warm up, time the implementations interleaved, and make one record each."""
    n = cw.size
    for s in steppers.values():
        for i in range(args.warmup):
            s.step(i)
    times = time_variants(steppers, cw, args.steps, args.repeats)
    records = []
    for v in vars_:
        ts = times[v.key]
        med = statistics.median(ts)
        rec = {"kind": "throughput", "world_size": n, "variant": v.key, "label": v.label, "lib": v.lib,
               "overlap": {"dtrain": v.overlap, "torch": True}.get(v.lib),
               "bucket_cap_mb": v.bucket_mb if v.lib != "local" else None,
               "buckets": steppers[v.key].n_buckets() if v.lib == "dtrain" else None, "batch_per_rank": BATCH,
               "steps": args.steps, "repeats": args.repeats, "samples_per_s": n * BATCH * args.steps / med,
               "best_samples_per_s": n * BATCH * args.steps / min(ts), "ms_per_step": med / args.steps * 1e3}
        records.append(rec)
        if cw.rank == 0:
            print(f"[n={n}] {v.label:45s} {rec['samples_per_s']:9.0f} samples/s  {rec['ms_per_step']:6.2f} ms/step",
                  flush=True)
    return records


def _checks_record(vars_, steppers: dict, cw, check: dict, torch_error) -> dict:
    """Parameter checksums of every implementation on every rank, and whether they agree."""
    n = cw.size
    sums = {k: checksum(s.params()) for k, s in steppers.items()}
    every = cw.allgather(sums)
    dtrain_keys = [v.key for v in vars_ if v.lib == "dtrain" or (v.lib == "local" and n == 1)]
    return {"kind": "checks", "world_size": n, "equivalence": check, "checksums": every,
            "ranks_identical": {k: all(e[k] == every[0][k] for e in every) for k in sums if k != "local" or n == 1},
            "dtrain_variants_identical": len({every[0][k] for k in dtrain_keys}) == 1,
            "final_loss": {k: s.loss_value(0) for k, s in steppers.items()}, "torch_note": torch_error,
            "check_steps": CHECK_STEPS}


def worker(args) -> list[dict]:
    """Every measurement in this process's MPI world; returns rank 0's JSON records (others: [])."""
    from mpi4py import MPI

    import dtrain.distributed as dist

    world, cw = dist.init(), MPI.COMM_WORLD
    n = cw.size
    vars_, steppers, torch, torch_error, n_params = _build_steppers(args, cw)
    check = check_equivalence(steppers, cw)
    if cw.rank == 0:
        print(f"[n={n}] equivalence check {'passed' if check['passed'] else 'FAILED'}: {check}", flush=True)
    records = _throughput_records(vars_, steppers, cw, args)
    for v in vars_:
        if v.trainer:  # its phases are the ZeRO variant's; it only keeps step with the others
            steppers[v.key].keep_pace(args.split_steps)
        elif v.lib != "torch":  # the reference too: it keeps every dtrain model at the same step count
            records.append({"kind": "split", "world_size": n, "variant": v.key, "label": v.label,
                            "steps": args.split_steps, **time_split(steppers[v.key], cw, args.split_steps)})
    if n > 1:
        records.append({"kind": "allreduce", "world_size": n, "count": n_params,
                        **allreduce_alone(world, cw, n_params), **shared_memory_floor(cw, n_params)})
    # Checksums now, while every implementation has run the same steps (the profile adds some to one).
    records.append(_checks_record(vars_, steppers, cw, check, torch_error))
    prof = profile_steps(steppers["dtrain"], cw, args.profile_steps) if n > 1 and args.profile_steps > 0 else None
    if torch is not None:
        torch.distributed.destroy_process_group()
    if cw.rank != 0:
        return []
    if prof is not None:
        records.append({"kind": "profile", "world_size": n, **prof})
    records.append({
        "kind": "meta", "world_size": n, "n_params": n_params, "thread_level": world.thread_level,
        "mpi_library": mpi_library(), "mpi4py": __import__("mpi4py").__version__,
        "torch": torch.__version__ if torch is not None else None, "torch_error": torch_error, "numpy": np.__version__,
        "widths": list(WIDTHS), "lr": LR, "momentum": MOMENTUM, "batch_per_rank": BATCH,
    })
    return records


# ---------------------------------------------------------------------------------------------
# Entry point: under mpiexec measure this world; else one mpiexec per world size, then one report
# ---------------------------------------------------------------------------------------------


def _worker_flags(args) -> list[str]:
    flags = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
             "--batches", str(args.batches), "--profile-steps", str(args.profile_steps),
             "--split-steps", str(args.split_steps), "--small-bucket-mb", str(args.small_bucket_mb),
             "--seed", str(args.seed)]
    return flags + (["--no-torch"] if args.no_torch else [])


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench throughput`` / ``python benchmarks/throughput.py``."""
    p.add_argument("--ranks", default="1,2",
                   help="world sizes to launch with mpiexec when not already under mpiexec (default 1,2)")
    p.add_argument("--steps", type=int, default=30, help="steps per timed repeat (default 30)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps per implementation (default 10)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats per implementation (default 7)")
    p.add_argument("--split-steps", type=int, default=60,
                   help="steps of the per-phase time split, per dtrain variant (default 60)")
    p.add_argument("--batches", type=int, default=4, help="distinct synthetic batches per rank (default 4)")
    p.add_argument("--small-bucket-mb", type=float, default=1.0,
                   help="also run dtrain with overlap and buckets of this many MB (0: skip; default 1)")
    p.add_argument("--profile-steps", type=int, default=30,
                   help="steps of the 2-rank cProfile on rank 0 (0: skip; default 30)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch DDP peer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)


def _check_args(args) -> None:
    args.ranks = [int(r) for r in str(args.ranks).split(",") if r.strip().isdigit()]
    args.out = args.out or default_out()
    if (args.steps < 1 or args.repeats < 1 or args.split_steps < 1 or args.warmup < 0 or args.batches < CHECK_STEPS
            or not args.ranks or min(args.ranks) < 1 or args.profile_steps < 0 or args.small_bucket_mb < 0):
        raise SystemExit(f"throughput benchmark: --steps, --repeats and --split-steps must be >= 1, --warmup and "
                         f"--profile-steps >= 0, --batches >= {CHECK_STEPS}, --ranks positive, --small-bucket-mb "
                         f">= 0; got {vars(args)}")


def _in_this_world(args, load_start, t0) -> int:
    records = worker(args)
    if not records:  # ranks other than 0
        return 0
    if args.worker is not None:
        args.worker.write_text("".join(json.dumps(r) + "\n" for r in records))
        return 0
    meta = {"load_start": load_start, "load_end": load_avg(), "wall_s": time.perf_counter() - t0}
    return 0 if write_outputs(args.out, records, f"mpiexec -n {records[0]['world_size']} {command_line()}", meta) else 1


def run(args) -> int:
    """``dtrain bench throughput``: measure the world it runs in (under mpiexec), else launch each world size."""
    _check_args(args)
    load_start, t0 = load_avg(), time.perf_counter()
    if args.worker is not None or under_mpiexec():
        return _in_this_world(args, load_start, t0)
    records, other = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            path = Path(tmp) / f"n{n}.jsonl"
            with OtherLoad() as load:
                launch_worker(__name__, n, path, _worker_flags(args))
            other[n] = (load.other_s, load.wall)
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta = {"load_start": load_start, "load_end": load_avg(), "wall_s": time.perf_counter() - t0, "other": other}
    ok = write_outputs(args.out, records, command_line(), meta)
    print("\n".join(throughput_table(summarize(records))))
    if not ok:
        print("throughput benchmark: a correctness check failed (see the Checks section)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":  # the rank side of a launch: python -m dtrain.bench.throughput
    from .cli import main

    sys.exit(main("throughput"))
