"""The throughput benchmark's report: throughput table, time split, profile, checks, machine; and the CSV."""

from __future__ import annotations

import platform
import statistics
from pathlib import Path

from .. import env
from .machine import blas_info, fmt_load
from .profile import profile_tables
from .report import command_section, fmt, ranks_label, verdict, write_csv
from .throughput_split import SPLIT_KEYS

GOAL_EFFICIENCY = 0.90  # weak-scaling efficiency of dtrain DDP from 1 to 2 ranks
GOAL_VS_TORCH = 1.4  # dtrain DDP samples/s over PyTorch DDP's at 2 ranks


def summarize(records: list[dict]) -> dict:
    """Throughput rows (one per variant, every world size side by side) with the derived ratios."""
    thr = [r for r in records if r["kind"] == "throughput"]
    worlds = sorted({r["world_size"] for r in thr})
    keys = list(dict.fromkeys(r["variant"] for r in thr))
    by = {(r["world_size"], r["variant"]): r for r in thr}
    rows = []
    for k in keys:
        row = {"variant": k, "label": next(r["label"] for r in thr if r["variant"] == k)}
        for n in worlds:
            r = by.get((n, k))
            row[n] = r
        one, two = by.get((1, k)), by.get((2, k))
        row["efficiency"] = two["samples_per_s"] / (2 * one["samples_per_s"]) if one and two else None
        rows.append(row)
    vs_torch = {}
    for n in worlds:
        t = by.get((n, "torch"))
        for k in keys:
            if t and (n, k) in by and k != "local":
                vs_torch[(n, k)] = by[(n, k)]["samples_per_s"] / t["samples_per_s"]
    return {"worlds": worlds, "rows": rows, "vs_torch": vs_torch, "by": by}


def throughput_table(s: dict) -> list[str]:
    """Markdown: samples/s and ms/step per implementation and world size, efficiency, ratio to torch."""
    worlds = s["worlds"]
    have_torch = any(r["variant"] == "torch" for r in s["rows"])
    head, rule = "| implementation |", "|---|"
    for n in worlds:
        head += f" {ranks_label(n)} samples/s | {ranks_label(n)} ms/step |"
        rule += "---:|---:|"
    if worlds == [1, 2]:
        head += " weak-scaling efficiency 1→2 |"
        rule += "---:|"
    if have_torch:
        for n in worlds:
            head += f" / torch at {ranks_label(n)} |"
            rule += "---:|"
    lines = [head, rule]
    for row in s["rows"]:
        line = f"| {row['label']} |"
        for n in worlds:
            r = row.get(n)
            line += (f" {fmt(r['samples_per_s'] if r else None, ',.0f')} |"
                     f" {fmt(r['ms_per_step'] if r else None, '.2f')} |")
        if worlds == [1, 2]:
            eff = row["efficiency"]
            line += f" **{fmt(eff * 100 if eff is not None else None, '.1f')}%** |"
        if have_torch:
            for n in worlds:
                v = s["vs_torch"].get((n, row["variant"]))
                bold = "**" if n == max(worlds) and v is not None else ""
                line += f" {bold}{fmt(v, '.2f')}{'x' if v is not None else ''}{bold} |"
        lines.append(line)
    return lines


SPLIT_ROWS = (
    ("forward", "forward + loss (`F.cross_entropy(ddp(x), y)`)"),
    ("backward_local", "backward, local part (`loss.backward()` minus `ddp.finish`; gradient hooks included)"),
    ("pack_in_hooks", "&nbsp;&nbsp;of which: packing buckets and launching all-reduces from the hooks"),
    ("finish", "**exposed communication: `ddp.finish`** (end-of-backward callback; `ddp.timings`)"),
    ("pack_in_finish", "&nbsp;&nbsp;of which: packing buckets not launched yet, launching them"),
    ("wait", "&nbsp;&nbsp;of which: waiting for the all-reduces (`Handle.wait`)"),
    ("unpack", "&nbsp;&nbsp;of which: writing the averaged gradients into `.grad`"),
    ("skew", "&nbsp;&nbsp;(arrival skew: how much later the last rank enters `ddp.finish` than the first)"),
    ("finish_first", "&nbsp;&nbsp;(`ddp.finish` on the rank that enters it first)"),
    ("finish_last", "&nbsp;&nbsp;(`ddp.finish` on the rank that enters it last: about the all-reduce alone)"),
    ("step", "zero_grad + optimizer step"),
    ("total", "**step (sum of the above)**"),
)
_LOCAL_ROWS = ("forward", "backward_local", "step", "total")  # the only rows of 1-rank and no-DDP columns


def split_table(records: list[dict]) -> tuple[list[str], list[dict]]:
    """Markdown: ms per step of each phase, one column per (world size, dtrain variant); and the columns."""
    splits = [r for r in records if r["kind"] == "split"]
    cols = [r for r in splits if r["world_size"] == 1 and r["variant"] == "dtrain"]
    cols += [r for r in splits if r["world_size"] > 1]
    if not cols:
        return [], []

    def name(c: dict) -> str:
        short = "no DDP (reference)" if c["variant"] == "local" else c["label"].replace("dtrain DDP, ", "")
        return f"{ranks_label(c['world_size'])}: {short}"

    head = "| phase (ms per step) |" + "".join(f" {name(c)} |" for c in cols)
    lines = [head, "|---|" + "---:|" * len(cols)]
    for key, label in SPLIT_ROWS:
        lines.append(f"| {label} |" + "".join(
            " — |" if (c["world_size"] == 1 or c["variant"] == "local") and key not in _LOCAL_ROWS
            else f" {c[key]:.2f} |" for c in cols))
    lines.append("| samples/s in this loop (global) |" + "".join(f" {c['samples_per_s']:,.0f} |" for c in cols))
    return lines, cols


def checks_lines(records: list[dict]) -> tuple[list[str], bool]:
    """The equivalence and checksum findings per world size, and whether all of them passed."""
    lines, ok = [], True
    for c in (r for r in records if r["kind"] == "checks"):
        n, eq = c["world_size"], c["equivalence"]
        ok = ok and eq["passed"] and all(c["ranks_identical"].values()) and c["dtrain_variants_identical"]
        part = (f"- {ranks_label(n)}: after {c['check_steps']} steps on the same batches the dtrain DDP variants"
                f"{' and dtrain without DDP' if n == 1 else ''} are "
                f"{'bitwise identical' if eq['dtrain_bitwise'] else '**NOT identical**'}")
        if eq["torch_max_abs_param_diff"] is not None:
            part += (f"; PyTorch DDP agrees (max |param difference| {eq['torch_max_abs_param_diff']:.1e}, max relative "
                     f"loss difference {eq['torch_max_rel_loss_diff']:.1e}; tolerance 1e-4)")
        lines.append(part + ".")
        ident = ", ".join(f"{k} {'identical' if v else '**DIFFERENT**'}" for k, v in c["ranks_identical"].items())
        sums = ", ".join(f"{k} `{c['checksums'][0][k]}`" for k in c["ranks_identical"])
        lines.append(f"  At the end (parameter SHA-256 prefix, rank 0: {sums}), across ranks: {ident}; dtrain variants "
                     f"{'identical to each other' if c['dtrain_variants_identical'] else '**differ from each other**'}."
                     f" Final training loss: " + ", ".join(f"{k} {v:.4f}" for k, v in c["final_loss"].items()) + ".")
    return lines, ok


def other_load_lines(other: dict, cores: int | None) -> list[str]:
    """A machine line: CPU time other processes used during each launch, if measurable."""
    parts = [f"{n} rank{'s' if n > 1 else ''}: {o:.1f} CPU-s in {w:.0f} s ({o / w / (cores or 1) * 100:.0f}% of the "
             "machine)" for n, (o, w) in other.items() if o is not None]
    if not parts:
        return []
    return ["- CPU time used by OTHER processes while each launch ran (machine busy time from /proc/stat minus "
            "this benchmark's own; anything well above 0 disturbed the timings): " + "; ".join(parts)]


def _allreduce_note(ar: dict) -> str:
    mb = ar["count"] * 4 / 2**20
    return (f"- An all-reduce of the whole gradient alone ({ar['count']:,} float32, {mb:.1f} MiB; median of 15, "
            f"slowest rank) at 2 ranks: dtrain ring on the calling thread **{ar['ring_main']:.2f} ms**, the same ring "
            f"through the communicator's worker thread (`async_op=True` + `wait()`, as DDP runs it) "
            f"{ar['ring_worker']:.2f} ms, MPI_Allreduce {ar['mpi_main']:.2f} ms"
            + (f", dtrain shm {ar['shm_main']:.2f} ms." if "shm_main" in ar else ".") + _floor_note(ar))


def _floor_note(ar: dict) -> str:
    if "shared_floor" not in ar:
        return ""
    return (f" Moving the data alone, the cheapest way (both buffers in one MPI shared-memory window; each rank adds "
            f"the other's half of its chunk into its own, then copies the other's summed chunk; no copy through MPI): "
            f"**{ar['shared_floor']:.2f} ms**; the same additions and copies from arrays the rank's own core had just "
            f"written: {ar['local_floor']:.2f} ms"
            + (" (moving the data between the cores, not the arithmetic, sets it)."
               if ar["shared_floor"] > 1.5 * ar["local_floor"] else
               " (here the move between the cores costs about what the arithmetic does).")
            + " The speed at which this machine's cores exchange data changes from minute to minute, so numbers "
            "measured one after the other can disagree.")


def _one_vs_two_notes(one: dict, on: dict, ref: dict | None, ar: dict | None) -> list[str]:
    fb1, fb2 = one["forward"] + one["backward_local"], on["forward"] + on["backward_local"]
    lines = [
        f"- Forward + local backward takes {fb1:.2f} ms at 1 rank and {fb2:.2f} ms per rank at 2 ranks "
        f"({(fb2 / fb1 - 1) * 100:+.0f}%; at 2 ranks it includes packing the buckets); zero_grad + step "
        f"{one['step']:.2f} vs {on['step']:.2f} ms"
        + (f" (no-DDP reference at 2 ranks: {ref['forward'] + ref['backward_local']:.2f} and {ref['step']:.2f} ms)"
           if ref else "")
        + ". The two ranks share the machine's cores, memory bandwidth and caches.",
        f"- A 2-rank step (overlap on) takes {on['total'] - one['total']:+.2f} ms more than a 1-rank step: "
        f"{on['finish']:.2f} ms in `ddp.finish` (the exposed communication) and "
        f"{on['total'] - one['total'] - on['finish']:+.2f} ms in local compute, packing and the optimizer."]
    if ar:
        verdict_ = ("so most of the early rank's wait is for the other rank's backward, not for the all-reduce"
                    if on["skew"] > on["finish_last"] else
                    "so the all-reduce itself, more than the skew, sets the wait")
        lines.append(f"- In `ddp.finish`, the rank that reaches it first spends {on['finish_first']:.2f} ms and the "
                     f"last one {on['finish_last']:.2f} ms (the all-reduce alone: {ar['ring_worker']:.2f} ms); the "
                     f"mean arrival skew is {on['skew']:.2f} ms, {verdict_}.")
    return lines


def split_notes(records: list[dict]) -> list[str]:
    """Findings under the time-split table (2-rank variants against 1 rank and the bare all-reduce)."""
    splits = {(r["world_size"], r["variant"]): r for r in records if r["kind"] == "split"}
    ar = next((r for r in records if r["kind"] == "allreduce"), None)
    one, on, off = splits.get((1, "dtrain")), splits.get((2, "dtrain")), splits.get((2, "dtrain_no_overlap"))
    small, ref = splits.get((2, "dtrain_small_buckets")), splits.get((2, "local"))
    lines = [_allreduce_note(ar)] if ar else []
    if one and on:
        lines += _one_vs_two_notes(one, on, ref, ar)
    if on and off:
        lines.append(
            f"- Overlap on vs off with 25 MB buckets ({on.get('buckets', '?')} bucket(s)): the bucket fills when "
            "the last gradient of backward arrives (the first layer's weight), so with one bucket both settings "
            f"launch the same all-reduce at the same moment; `ddp.finish` {on['finish']:.2f} vs {off['finish']:.2f} ms "
            "(with overlap off the packing moves from the hook into `finish`).")
    if small and on:
        lines.append(
            f"- With small buckets ({small.get('buckets', '?')} buckets; the first layer's 3.1 MB weight is always "
            f"the last one) the earlier buckets are all-reduced during backward: `ddp.finish` on the last-arriving "
            f"rank {small['finish_last']:.2f} ms vs {on['finish_last']:.2f} ms with one bucket, local backward "
            f"{small['backward_local']:.2f} vs {on['backward_local']:.2f} ms, step {small['total']:.2f} vs "
            f"{on['total']:.2f} ms.")
    return lines


def profile_lines(p: dict) -> list[str]:
    """The cProfile section: areas, top functions and what they say."""
    areas = {name: share for share, name in p["areas"]}

    def share(prefix: str) -> float:
        return sum(v for k, v in areas.items() if k.startswith(prefix))

    gemm, wait, optim_, ddp_ = share("GEMMs"), share("waiting"), share("optimizer"), share("DDP")
    python = max(0.0, 1.0 - gemm - wait - optim_ - ddp_)  # everything else
    return [
        f"## Profile: one 2-rank dtrain step (overlap on), rank 0, {p['steps']} steps under cProfile", "",
        f"{p['ms_per_step']:.2f} ms per step under the profiler (main thread only: the all-reduces run on the "
        "communicator's worker thread and appear here as the time the main thread waits for them). Self time "
        "grouped by where it is spent; NumPy operators written inline (`a @ b`) count in the dtrain function "
        "that runs them, so the GEMM row is the BLAS work plus a few Python lines around it.", "",
        *profile_tables(p), "", "Findings:", "",
        f"- BLAS dominates: the GEMMs of the three Linear layers (forward and backward) are **{gemm * 100:.0f}%** of "
        "rank 0's main-thread time.",
        f"- Memory-bound passes over the 1.86 M parameters come next: the SGD momentum update {optim_ * 100:.0f}% and "
        f"DDP's bucket packing (the gradients backward did not write into the bucket) and unpacking (bucket / total "
        "into `.grad`) "
        f"{ddp_ * 100:.0f}%.",
        f"- Waiting for the all-reduce is **{wait * 100:.0f}%** (the main thread blocked in `Handle.wait` inside "
        "`ddp.finish`, which includes waiting for the other rank to finish its backward).",
        f"- The autograd engine, Function/Tensor/Module bookkeeping and the remaining small NumPy calls together are "
        f"{python * 100:.0f}%: the engine's Python overhead is not where a 2-rank step loses time.",
    ]



def _intro(s: dict, meta: dict, records: list[dict], cores: int) -> list[str]:
    have_torch = meta["torch"] is not None
    buckets = {k: r["buckets"] for (n, k), r in s["by"].items() if r["lib"] == "dtrain" and r["buckets"]}
    first = next(r for r in records if r["kind"] == "throughput")
    return [
        "# Data-parallel training throughput: dtrain DDP vs PyTorch DDP (CPU, 1 BLAS thread per rank)", "",
        f"Weak scaling of the MLP {'-'.join(map(str, meta['widths']))} (ReLU; {meta['n_params']:,} float32 "
        f"parameters, {meta['n_params'] * 4 / 2**20:.1f} MiB of gradients), softmax cross-entropy, SGD lr "
        f"{meta['lr']} momentum {meta['momentum']}, **batch {meta['batch_per_rank']} per rank**, synthetic inputs "
        "(standard normal) and random labels, at "
        f"{' and '.join(map(str, s['worlds']))} ranks. Samples/s are global (all ranks together).", "",
        "- **dtrain DDP**: `dist.DistributedDataParallel(model, bucket_cap_mb=25, overlap=True, algorithm=\"ring\")`, "
        "then `F.cross_entropy(ddp(x), y)` -> `opt.zero_grad()` -> `loss.backward()` (returns with averaged "
        "gradients) -> `opt.step()`. Buckets per variant: "
        + ", ".join(f"{k} {v}" for k, v in buckets.items()) + " (the whole gradient fits one 25 MB bucket). "
        "In every dtrain variant backward writes the Linear weights' gradients straight into their buckets "
        "(`Tensor.set_grad_buffer`): the hooks copy only the biases, and the bucket's job weights by the sample "
        "count.",
        "- **overlap off**: `overlap=False`; **small buckets**: `overlap=True` with small buckets, so all-reduces can "
        "start during backward (not one of the issue's configurations; shows what overlap does here).",
        "- **shm**: `algorithm=\"shm\"`: the buckets live in a shared-memory window (backward writes the weights' "
        "gradients into it, each rank sums its chunk of every rank's segment in place, the write-back reads each "
        "chunk from the rank that summed it; no copy into or out of the all-reduce; the sample counts travel in "
        "the window's headers).",
        "- **ZeRO-1, shm**: no DDP: `dist.ZeroRedundancyOptimizer(model.parameters(), optim.SGD, algorithm=\"shm\", "
        "...)` on the bare model; `opt.step()` averages and updates. The parameters and gradients live in a "
        "shared-memory window (backward writes the weights' gradients into it); each rank sums its chunk of the "
        "gradient, updates that chunk of the parameters (its shard of the momentum), and reads the other chunks' "
        "updated parameters from the ranks that updated them: the same bits as DDP + SGD at 2 ranks, and half "
        "the optimizer's work per rank.",
        "- **dtrain train --zero --allreduce shm**: the same ZeRO-1 optimizer driven by `Trainer.train_step(x, y)` "
        "with the seams `dtrain train --zero` builds (`ZeroGradientSync`, `MPICollectives`): the command line's step, "
        "with the batch placement, the loss's `item()`, the control votes (one MPI_Allreduce of four values), "
        "the finiteness check of the rank's gradients (one pass over them) and the accuracy count. Not in the time "
        "split below (its phases are the ZeRO row's); it runs the split's steps untimed to keep step with the others.",
        "- **reference, no DDP**: the same dtrain loop on the bare model; at 2 ranks each rank trains alone on its own "
        "batches (no communication at all), so its scaling efficiency is what sharing the machine costs before any "
        "communication: the ceiling for every data-parallel row.",
        ("- **PyTorch DDP**: `torch.nn.parallel.DistributedDataParallel` with its defaults (gloo, 25 MB buckets, 1 MB "
         f"first bucket), torch {meta['torch']}, `torch.set_num_threads(1)`, process group initialised from "
         "MASTER_ADDR=127.0.0.1/MASTER_PORT with rank and size from mpi4py, in the same `mpiexec` launch as dtrain; "
         "same initial weights and batches.") if have_torch else
        f"- **PyTorch DDP: not measured** ({meta['torch_error']}); only dtrain rows are shown.",
        "",
        f"Timing: {first['steps']} steps per repeat, {first['repeats']} interleaved repeats per implementation after "
        "warm-up (order rotated each repeat); each repeat starts at a barrier and counts the slowest rank; tables "
        "show the median repeat (the CSV also has the best). Weak-scaling efficiency = samples/s(2) / "
        "(2 x samples/s(1)).", "",
        f"**Shared machine:** the 2 ranks run on a machine with {cores} usable cores, one core's worth per rank; "
        "there is no idle core for communication progress, so the ring all-reduce (on each rank's worker thread, "
        "MPICH polling) competes with the ranks' own BLAS work, and the two ranks also share the memory bandwidth "
        "and caches. At 1 rank the process has the machine to itself (the second core idles). So the 2-rank numbers "
        "describe this 2-core machine, not two dedicated cores or nodes, which would trade the sharing for an "
        "interconnect.", "",
    ]


def _pooled_baseline(s: dict) -> list[str]:
    """Efficiencies against the median 1-rank speed of every dtrain row: at 1 rank they all run the same code (DDP
    does nothing at world size 1), so their median is a steadier baseline than any one row's 1-rank timing."""
    ones = [s["by"][(1, row["variant"])]["samples_per_s"] for row in s["rows"]
            if row["variant"] != "torch" and (1, row["variant"]) in s["by"]]
    if len(ones) < 2 or 2 not in s["worlds"]:
        return []
    base = statistics.median(ones)
    effs = ", ".join(f"{row['label']} **{s['by'][(2, row['variant'])]['samples_per_s'] / (2 * base) * 100:.1f}%**"
                     for row in s["rows"] if row["variant"] != "torch" and (2, row["variant"]) in s["by"])
    return [f"The dtrain rows run the same code at 1 rank; their 1-rank speeds spread from {min(ones):,.0f} to "
            f"{max(ones):,.0f} samples/s ({(max(ones) / min(ones) - 1) * 100:.0f}%, the run-to-run noise). Against "
            f"their median ({base:,.0f} samples/s) as the 1-rank baseline, the 2-rank efficiencies are: {effs}.", ""]


def _goals(s: dict, records: list[dict]) -> list[str]:
    eff = next((row["efficiency"] for row in s["rows"] if row["variant"] == "dtrain"), None)
    ratio = s["vs_torch"].get((2, "dtrain"))
    ceiling = next((row["efficiency"] for row in s["rows"] if row["variant"] == "local"), None)
    md = [
        *throughput_table(s), "",
        "Goals (reported, not asserted):", "",
        f"- weak-scaling efficiency of dtrain DDP (overlap on) 1→2 ranks >= {GOAL_EFFICIENCY:.0%}: "
        f"**{fmt(eff * 100 if eff is not None else None, '.1f')}%**, {verdict(eff, GOAL_EFFICIENCY)};",
        f"- dtrain DDP >= {GOAL_VS_TORCH}x PyTorch DDP samples/s at 2 ranks: **{fmt(ratio, '.2f')}x**, "
        f"{verdict(ratio, GOAL_VS_TORCH)}.", "",
    ]
    for key, how in (("dtrain_shm", "with `algorithm=\"shm\"` (one node)"),
                     ("dtrain_zero_shm", "with ZeRO-1 over the shared window instead of DDP (one node; "
                                         "`ZeroRedundancyOptimizer(..., algorithm=\"shm\")`)"),
                     ("dtrain_trainer_zero_shm", "from the command line, `dtrain train --zero --allreduce shm` "
                                                 "(the Trainer's own step)")):
        other = next((row["efficiency"] for row in s["rows"] if row["variant"] == key), None)
        if other is not None:
            other_ratio = s["vs_torch"].get((2, key))
            md[-1:-1] = [f"- the same two {how}: **{other * 100:.1f}%**, {verdict(other, GOAL_EFFICIENCY)}; "
                         f"**{fmt(other_ratio, '.2f')}x** PyTorch DDP, {verdict(other_ratio, GOAL_VS_TORCH)}."]
    md += _pooled_baseline(s)
    if eff is not None and ceiling is not None:
        md += [f"For scale: two ranks that do not communicate at all reach {ceiling * 100:.1f}% here (the reference "
               f"row), so sharing the machine alone costs {100 - ceiling * 100:.1f} points of efficiency before DDP "
               "adds anything; the time split below shows where the rest goes."]
        one_ms = s["by"][(1, "dtrain")]["ms_per_step"]
        ref_ms = s["by"][(2, "local")]["ms_per_step"]
        ar = next((r for r in records if r["kind"] == "allreduce"), None)
        if ar:
            bound = one_ms / (ref_ms + ar["ring_main"])
            md[-1] += (f" A bound for this machine: the reference's 2-rank step plus one bare all-reduce of the "
                       f"gradient ({ref_ms:.2f} + {ar['ring_main']:.2f} ms; no packing, no skew, nothing hidden) "
                       f"would give {bound * 100:.0f}%. Hiding the all-reduce behind backward would need CPU time "
                       "that no rank has spare here, since the all-reduce is itself CPU work (memory copies and "
                       "additions on the ranks' own cores).")
            if "shared_floor" in ar:
                floor = one_ms / (ref_ms + ar["shared_floor"])
                md[-1] += (f" An all-reduce that cost only the data movement itself (below, {ar['shared_floor']:.2f} "
                           f"ms) would give {floor * 100:.0f}%.")
        md.append("")
    same = [s["by"][(1, k)]["samples_per_s"] for k in ("dtrain", "dtrain_no_overlap", "dtrain_small_buckets", "local")
            if (1, k) in s["by"]]
    if len(same) > 1:
        md += [f"At 1 rank the dtrain rows run the same code (DDP does nothing at world size 1), so their spread, "
               f"{min(same):,.0f} to {max(same):,.0f} samples/s ({(max(same) / min(same) - 1) * 100:.0f}%), shows "
               "the run-to-run noise of these numbers.", ""]
    return md


def _split_section(records: list[dict], s: dict) -> list[str]:
    split_lines, split_cols = split_table(records)
    if not split_lines:
        return []
    splits = {(r["world_size"], r["variant"]): r for r in records if r["kind"] == "split"}
    for key, r in s["by"].items():  # the split table's notes want the bucket count
        if key in splits:
            splits[key]["buckets"] = r["buckets"]
    return ["## Time split of a dtrain step", "",
            f"Mean ms per step over one loop of {split_cols[0]['steps']} steps per variant (after 5 more), averaged "
            "over ranks; the variants run one after the other. `ddp.finish` runs inside `loss.backward()` (an "
            "engine callback once the last gradient is delivered): it launches buckets not yet launched, waits "
            "for the all-reduces and writes the averaged gradients back; its time (`ddp.last_finish_s`) is the "
            "communication cost the step does not hide. A rank enters it at the end of its backward minus that "
            "time, which gives the arrival skew between ranks."
            + (" The ZeRO-1 column has no `ddp.finish`: its whole synchronisation (the chunk's sum, the update of "
               "the rank's shard, the copy of the other shards) is in its `opt.step()`."
               if any(k[1] == "dtrain_zero_shm" for k in splits) else ""), "",
            *split_lines, "", *split_notes(records), ""]


def _machine(meta: dict, meta_run: dict, cores: int) -> list[str]:
    torch = f"torch {meta['torch']}" if meta["torch"] is not None else f"torch not available ({meta['torch_error']})"
    return [
        "## Machine", "",
        f"- CPU: {env.cpu_model()} ({cores} usable cores); one process per rank, one BLAS thread each "
        "(OMP/OPENBLAS/MKL_NUM_THREADS=1 set before importing NumPy and torch; torch.set_num_threads(1))",
        f"- MPI: {meta['mpi_library']}; mpi4py {meta['mpi4py']}; thread level {meta['thread_level']}; 1 node",
        f"- Python {platform.python_version()}, NumPy {meta['numpy']}, {torch}",
        f"- BLAS: {blas_info()}",
        f"- load average (1/5/15 min) at start {fmt_load(meta_run['load_start'])}, at end "
        f"{fmt_load(meta_run['load_end'])} (includes this benchmark itself)",
        *other_load_lines(meta_run.get("other", {}), cores),
        f"- wall time of the whole run: {meta_run['wall_s']:.0f} s", ""]


def _csv_rows(s: dict, records: list[dict]) -> list[dict]:
    splits = {(r["world_size"], r["variant"]): r for r in records if r["kind"] == "split"}
    eff_by = {row["variant"]: row["efficiency"] for row in s["rows"]}
    rows = []
    for (n, k), r in sorted(s["by"].items()):
        sp = splits.get((n, k))
        rows.append({**r, "scaling_efficiency": eff_by.get(k) if n == 2 else "",
                     "ratio_vs_torch": s["vs_torch"].get((n, k), ""),
                     **{f"split_{key}_ms": sp[key] if sp else "" for key in SPLIT_KEYS}})
    return rows


CSV_FIELDS = ("world_size", "variant", "lib", "overlap", "bucket_cap_mb", "buckets", "batch_per_rank", "steps",
              "repeats", "samples_per_s", "best_samples_per_s", "ms_per_step", "scaling_efficiency",
              "ratio_vs_torch", *(f"split_{k}_ms" for k in SPLIT_KEYS))


def write_outputs(out: Path, records: list[dict], command: str, meta_run: dict) -> bool:
    """Write throughput.md and throughput.csv to ``out``; return whether every correctness check passed."""
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(records)
    meta = [r for r in records if r["kind"] == "meta"][-1]
    cores = env.usable_cores()
    checks, ok = checks_lines(records)
    prof = next((r for r in records if r["kind"] == "profile"), None)
    md = [*_intro(s, meta, records, cores), "## Throughput", "", *_goals(s, records), *_split_section(records, s),
          *([*profile_lines(prof), ""] if prof else []), "## Checks", "", *checks, "",
          *_machine(meta, meta_run, cores), *command_section(command)]
    (out / "throughput.md").write_text("\n".join(md))
    write_csv(out / "throughput.csv", CSV_FIELDS, _csv_rows(s, records))
    print(f"wrote {out / 'throughput.md'} and {out / 'throughput.csv'}")
    return ok
