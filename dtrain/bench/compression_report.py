"""The compression benchmark's report: tables per model and world size, goals, findings, checks, the plot,
compression.md and compression.csv."""

from __future__ import annotations

import math
import platform
from pathlib import Path

from .. import env
from .compression_plot import plot
from .compression_stats import CLI_DEFAULTS, GOAL_FEWER, GOAL_LOSS_PP, TEST_SAMPLES, aggregate, meets_goal
from .machine import fmt_load
from .report import command_section, ranks_label, write_csv


def _f(v, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _bytes(v: float) -> str:
    if v is None or math.isnan(v):
        return "—"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:,.2f} {unit}"
    return f"{v:,.0f} B"


def param_counts(models: list[str]) -> dict[str, int]:
    """Trainable parameters of each zoo model on digits (for the plain-ring byte check); {} if unavailable."""
    try:
        from dtrain.models import build_model

        shapes = {"mlp": (64,), "cnn": (1, 8, 8)}
        return {m: sum(int(p.data.size) for p in build_model(m, shapes[m], 10).parameters()) for m in models
                if m in shapes}
    except Exception:  # dtrain not importable here: skip the check
        return {}


def expected_plain_bytes(params: int, ranks: int) -> int | None:
    """What rank 0 sends per step in a plain ring all-reduce of one float32 bucket plus the sample count."""
    try:
        from dtrain.distributed.collectives import ring_allreduce_bytes
    except Exception:
        return None
    return ring_allreduce_bytes(params, 4, ranks, 0) + ring_allreduce_bytes(1, 8, ranks, 0)


def table_lines(agg: dict, model: str, ranks: int, specs: list[str]) -> list[str]:
    lines = ["| compressor | test accuracy % (per seed) | Δ vs none (pp) | bytes/step (rank 0, run mean) "
             "| bytes/step, last epoch | fewer bytes than none | compression ratio | ms/step "
             "| goal: ≥100x fewer, ≤1 pp loss |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for spec in specs:
        a = agg.get((model, ranks, spec))
        if a is None:
            continue
        if not a["ok"]:
            err = a["errors"][0]["error"].replace("|", "\\|") if a["errors"] else "not run"
            lines.append(f"| `{spec}` | **failed**: {err} | — | — | — | — | — | — | — |")
            continue
        per_seed = ", ".join(f"{v:.2f}" for v in a["accs"])
        acc = f"{a['acc']:.2f} ({per_seed})" if len(a["accs"]) > 1 else f"{a['acc']:.2f}"
        if a["errors"]:
            acc += f"; seed {', '.join(str(r['seed']) for r in a['errors'])} failed: " + \
                   a["errors"][0]["error"].replace("|", "\\|")
        goal = "—" if spec == "none" else ("**yes**" if meets_goal(a) else "no")
        lines.append(f"| `{spec}` | {acc} | {_f(a['delta'], '+.2f')} | {_bytes(a['bytes_per_step'])} | "
                     f"{_bytes(a['last_bytes'])} | {_f(a['fewer'], ',.1f')}x | {_f(a['ratio'], ',.1f')} | "
                     f"{_f(a['ms_per_step'], '.2f')} | {goal} |")
    return lines


def goal_lines(agg: dict, models: list[str], ranks_list: list[int], specs: list[str]) -> list[str]:
    lines = ["## Goals (reported, not asserted)", ""]
    for model in models:
        winners = [s for s in specs if s != "none" and all(
            (model, n, s) in agg and meets_goal(agg[(model, n, s)]) for n in ranks_list)]
        detail = []
        for s in winners:
            parts = [f"{ranks_label(n)} {agg[(model, n, s)]['fewer']:,.0f}x fewer bytes, "
                     f"{agg[(model, n, s)]['delta']:+.2f} pp" for n in ranks_list]
            detail.append(f"`{s}` ({'; '.join(parts)})")
        partial = [f"`{s}` at {ranks_label(n)}" for s in specs if s != "none" and s not in winners
                   for n in ranks_list if (model, n, s) in agg and meets_goal(agg[(model, n, s)])]
        verdict = "**met**" if winners else "**missed**"
        lines.append(f"- {model}: a compressor with >= {GOAL_FEWER:.0f}x fewer bytes per step than `none` and <= "
                     f"{GOAL_LOSS_PP:g} point accuracy loss at {' and '.join(ranks_label(n) for n in ranks_list)}: "
                     f"{verdict}" + (f": {', '.join(detail)}" if detail else "")
                     + (f". Met at one world size only: {', '.join(partial)}" if partial else "") + ".")
        for n in ranks_list:
            cands = [(s, agg[(model, n, s)]) for s in specs if s != "none" and (model, n, s) in agg
                     and agg[(model, n, s)]["ok"] and agg[(model, n, s)]["fewer"] >= GOAL_FEWER]
            if cands:
                lines.append(f"  - every compressor at >= {GOAL_FEWER:.0f}x fewer bytes, {ranks_label(n)}: "
                             + ", ".join(f"`{s}` {a['fewer']:,.0f}x {a['delta']:+.2f} pp" for s, a in cands) + ".")
    if "powersgd:2" in specs:
        for model in models:
            parts = []
            for n in ranks_list:
                a = agg.get((model, n, "powersgd:2"))
                if a is None:
                    continue
                d = a["delta"]
                ok = not math.isnan(d) and d >= -GOAL_LOSS_PP
                parts.append(f"{ranks_label(n)} {_f(d, '+.2f')} pp ({'met' if ok else 'missed'})")
            lines.append(f"- {model}: `powersgd:2` within {GOAL_LOSS_PP:g} point of `none`: {'; '.join(parts)}.")
    return [*lines, ""]


def noise_lines(agg: dict, models: list[str], ranks_list: list[int]) -> list[str]:
    """How big a 1-point difference is, next to the seed-to-seed spreads."""
    out = [f"- The digits test split has {TEST_SAMPLES} samples: one sample is {100 / TEST_SAMPLES:.2f} points, so "
           f"the 1-point threshold is {TEST_SAMPLES / 100:.1f} test samples."]
    spreads, widest = [], []
    for model in models:
        for n in ranks_list:
            a = agg.get((model, n, "none"))
            if a and len(a["accs"]) > 1:
                spreads.append(f"{model} at {ranks_label(n)} {max(a['accs']) - min(a['accs']):.2f} pp")
            # the widest seed-to-seed spread among compressors that trained normally (within 5 points of none)
            cell = [(s, b) for (m, k, s), b in agg.items() if m == model and k == n and len(b["accs"]) > 1
                    and not math.isnan(b["delta"]) and b["delta"] > -5]
            if cell:
                s, b = max(cell, key=lambda sb: max(sb[1]["accs"]) - min(sb[1]["accs"]))
                widest.append(f"{model} at {ranks_label(n)} {max(b['accs']) - min(b['accs']):.2f} pp (`{s}`)")
    if spreads:
        out.append("- Seed-to-seed spread (same schedule, different seed: initial weights, shuffling, dropout) of "
                   "`none`: " + "; ".join(spreads) + ". Widest spread of any compressor that trained normally: "
                   + "; ".join(widest) + ". So a delta within about a point of the threshold is not resolved by two "
                   "seeds; the deltas are paired (each seed against `none` with the same seed) and averaged.")
    else:
        out.append("- One seed per configuration: a delta of a point or less is within what the seed alone can move "
                   "(run `--seeds 0,1` or more to see the spread).")
    return out


def finding_lines(rows: list[dict], agg: dict, models: list[str], ranks_list: list[int],
                  specs: list[str]) -> list[str]:
    """What the numbers show beyond the table: which compressors broke training, and how."""
    out = []
    broken = []
    for spec in specs:
        cells = [(m, n, agg[(m, n, spec)]) for m in models for n in ranks_list if (m, n, spec) in agg]
        bad = [(m, n, a) for m, n, a in cells if a["errors"] or (not math.isnan(a["delta"]) and a["delta"] < -5)]
        if spec == "none" or not bad:
            continue
        parts = []
        for m, n, a in bad:
            runs = sorted(a["runs"], key=lambda r: r["seed"])
            desc = []
            for r in runs:
                if r.get("error"):
                    desc.append(f"seed {r['seed']} stopped: {r['error']}")
                else:
                    rose = r["train_loss"] > 2 * r["train_loss_min"]
                    desc.append(f"seed {r['seed']} {r['test_accuracy']:.1f}%, train loss min {r['train_loss_min']:.3f}"
                                f" -> final {r['train_loss']:.3f}" + (" (rose again)" if rose else ""))
            parts.append(f"{m} at {ranks_label(n)}: " + "; ".join(desc))
        broken.append(f"- `{spec}`: " + " | ".join(parts))
    if broken:
        out += ["Compressors that broke training (more than 5 points below `none`, or a failed run), per seed the "
                "final accuracy and the training loss per epoch (lowest epoch, then last):", "", *broken, ""]
    notes = []
    if any(s.startswith("randomk") for s in specs):
        notes.append("`randomk` (error feedback on by default) sends the k chosen coordinates of gradient + memory "
                     "unscaled; every other coordinate waits in the memory for on average 1/ratio steps, so the "
                     "update is made of gradients up to hundreds of steps old, on top of momentum 0.9 (the likely "
                     "reason it trains badly here, not verified further). "
                     "`randomk:RATIO:ef=0` (scaled by d/k, unbiased) is the other variant; not run here.")
    if any(s.startswith("qsgd") for s in specs):
        notes.append("`qsgd` quantises every block of 512 coordinates against its own L2 norm (the paper's "
                     "bucketing; `bucket=N` to change), with no error feedback: the variance it adds is about "
                     "sqrt(N)/LEVELS times the squared norm (Alistarh et al.). With one norm for the whole bucket "
                     "(`bucket=0`, the behaviour before this run) `qsgd:4` left the CNN at chance (9-13 %).")
    if any(s.startswith("powersgd") for s in specs):
        notes.append("`powersgd` sends biases (and any matrix with (rows + cols) x RANK x 2 >= rows x cols) "
                     "uncompressed, next to the P factors, so on these small models its ratio is bounded well below "
                     "100x whatever the rank (see the last-epoch bytes of `powersgd:1`).")
    if notes:
        out += ["Notes on the methods (from `dtrain/distributed/compression.py`'s documented behaviour):", "",
                *[f"- {n}" for n in notes], ""]
    return out




def _byte_checks(rows: list[dict], agg: dict, models: list[str], ranks_list: list[int], pcount: dict) -> list[str]:
    lines = []
    for model in models:
        for n in ranks_list:
            a = agg.get((model, n, "none"))
            exp = expected_plain_bytes(pcount[model], n) if model in pcount else None
            if a and a["ok"]:
                lines.append(f"- {model}, {ranks_label(n)}: `none` compression ratio {a['ratio']:.4f} (expected 1), "
                             f"bytes/step {a['bytes_per_step']:,.0f}"
                             + (f"; plain ring of {pcount[model]:,} float32 + the 8-byte sample count at rank 0: "
                                f"{exp:,} bytes/step" if exp else "") + ".")
            f16 = agg.get((model, n, "fp16"))
            if f16 and f16["ok"]:
                lines.append(f"  `fp16` compression ratio {f16['ratio']:.3f} (expected about 2).")
            uncs = {r["spec"]: r["uncompressed_per_step"] for r in rows if r["model"] == model and r["ranks"] == n
                    and not r.get("error")}
            if uncs and exp:
                off = {s: u for s, u in uncs.items() if abs(u - exp) > 0.5}
                lines.append("  `bytes_uncompressed` / steps equals the plain-ring figure for every compressor"
                             if not off else "  `bytes_uncompressed` / steps differs from the plain-ring figure for: "
                             + ", ".join(f"`{s}` {u:,.1f}" for s, u in off.items()))
    return lines


def check_lines(rows: list[dict], agg: dict, models: list[str], ranks_list: list[int], pcount: dict) -> list[str]:
    """The Checks section: byte accounting, per-epoch bytes, world-size invariance, failed runs."""
    lines = ["## Checks", "", *_byte_checks(rows, agg, models, ranks_list, pcount)]
    mism = [r for r in rows if not r.get("error") and r.get("summary_compression_ratio") is not None
            and abs(r["summary_compression_ratio"] - r["compression_ratio"]) > 1e-6 * max(1.0, r["compression_ratio"])]
    lines.append("- `summary.json`'s compression_ratio equals bytes_uncompressed / bytes_sent of the last metrics "
                 "record in every run" if not mism else "- `summary.json`'s compression_ratio differs from the "
                 "metrics' bytes_uncompressed / bytes_sent in: " + ", ".join(
                     f"{r['model']} n{r['ranks']} `{r['spec']}` s{r['seed']} ({r['summary_compression_ratio']:.4g} vs "
                     f"{r['compression_ratio']:.4g})" for r in mism))
    uneven, warm = [], []
    for r in rows:
        per = r.get("epoch_bytes_per_step") or []
        if r["spec"].startswith("powersgd") and len(per) > 1:
            # its first start_iter (10) steps are plain all-reduces: only the first epoch is expected to differ
            warm.append(per[0] / per[1] if per[1] else math.nan)
            per = per[1:]
        if len(per) > 1 and max(per) > 0 and (max(per) - min(per)) / max(per) > 0.01:
            uneven.append(f"{r['model']} n{r['ranks']} `{r['spec']}` s{r['seed']} "
                          f"({min(per):,.0f}-{max(per):,.0f})")
    lines.append("- bytes per step is the same (within 1%) in every epoch of every run"
                 + (" (for `powersgd`, every epoch after the first; its first epoch, with the 10 uncompressed "
                    f"warm-up steps, sends {min(warm):.1f}-{max(warm):.1f}x the later epochs' bytes per step)"
                    if warm else "") if not uneven else
                 "- bytes per step varies between epochs (min-max over epochs) in: " + ", ".join(uneven))
    for model in models:
        if len(ranks_list) < 2:
            break
        for seed in sorted({r["seed"] for r in rows}):
            losses = {r["ranks"]: r["test_loss"] for r in rows if r["model"] == model and r["spec"] == "none"
                      and r["seed"] == seed and not r.get("error")}
            if len(losses) > 1:
                lo, hi = min(losses.values()), max(losses.values())
                lines.append(f"- {model}, seed {seed}, `none`: final test loss at "
                             + ", ".join(f"{ranks_label(n)} {v:.7f}" for n, v in sorted(losses.items()))
                             + f" (relative spread {(hi - lo) / hi:.1e}; DDP's sample-weighted average makes the "
                               "world size invisible up to rounding"
                             + (", except that each rank draws its own dropout masks)" if model == "cnn" else ")"))
    wrong = [r for r in rows if not r.get("error") and r.get("world_size") != r["ranks"]]
    if wrong:
        lines.append("- world_size in summary.json differs from the launch in: "
                     + ", ".join(f"{r['model']} `{r['spec']}` n{r['ranks']}" for r in wrong))
    failed = [r for r in rows if r.get("error") and not r["error"].startswith("skipped")]
    lines.append(f"- failed runs: {len(failed)}" + (": " + "; ".join(
        f"{r['model']} n{r['ranks']} `{r['spec']}` seed {r['seed']}: {r['error']}" for r in failed) if failed else ""))
    return [*lines, ""]


CSV_FIELDS = ("model", "ranks", "spec", "seed", "epochs", "steps", "test_accuracy", "best_test_accuracy",
              "delta_vs_none_pp", "test_loss", "train_loss", "train_loss_min", "train_loss_max", "bytes_sent",
              "bytes_uncompressed", "bytes_per_step",
              "last_epoch_bytes_per_step", "fewer_bytes_than_none", "compression_ratio", "wall_s", "ms_per_step",
              "samples_per_s", "launch_s", "other_cpu_s",
              "param_checksum", "error")


def _oversubscribed(args, cores: int) -> list[str]:
    over = [n for n in args.ranks if n > cores]
    md: list[str] = []
    if over:
        md += [f"**Oversubscribed:** this machine has {cores} usable cores, so the {', '.join(map(str, over))}-rank "
               f"runs put more than one rank on a core: ms/step at {', '.join(map(str, over))} ranks measures that "
               "contention (ranks waiting for a core inside every all-reduce), not the cost of the compressors. "
               "Accuracy and bytes are unaffected. Even at "
               f"{ranks_label(min(n for n in args.ranks))} the ranks share the machine with the MPI progress of each "
               "other; these are small models (the step is Python and MPI latency, not bandwidth), so time per "
               "step here says little about what compression would save on a real network.", ""]
    return md


def _results(rows: list[dict], agg: dict, args, pcount: dict, plot_error) -> list[str]:
    md: list[str] = []
    md += goal_lines(agg, args.models, args.ranks, args.specs)
    md += ["Reading the numbers:", ""] + noise_lines(agg, args.models, args.ranks) + [""]
    md += finding_lines(rows, agg, args.models, args.ranks, args.specs)
    md += ["## Results", ""]
    for model in args.models:
        for n in args.ranks:
            md += [f"### {model}, {ranks_label(n)}", "", *table_lines(agg, model, n, args.specs), ""]
    md += (["![accuracy vs bytes per step](compression.png)", ""] if plot_error is None else [plot_error, ""])
    md += check_lines(rows, agg, args.models, args.ranks, pcount)
    return md


def _machine(rows: list[dict], args, command: str, meta: dict, cores: int) -> list[str]:
    other = meta.get("other_s")
    return [
        "## Machine", "",
        f"- CPU: {env.cpu_model()} ({cores} usable cores); one process per rank, one BLAS thread each "
        "(OMP/OPENBLAS/MKL_NUM_THREADS=1 in the ranks' environment)",
        f"- MPI: {meta['versions'].get('mpi', 'unknown')}; mpiexec `{meta['mpiexec']}`; mpi4py "
        f"{meta['versions'].get('mpi4py', '?')}; 1 node",
        f"- Python {platform.python_version()}, NumPy {meta['versions'].get('numpy', '?')}, dtrain "
        f"{meta['versions'].get('dtrain', '?')} ({meta['git']})",
        f"- load average (1/5/15 min) at start {fmt_load(meta['load_start'])}, at end {fmt_load(meta['load_end'])} "
        "(includes this benchmark itself)",
        "- CPU time used by OTHER processes while the runs went on (machine busy time from /proc/stat minus this "
        "benchmark's own): " + (f"{other:.0f} CPU-s in {meta['wall_s']:.0f} s "
                                f"({other / max(meta['wall_s'] * max(cores, 1), 1e-9) * 100:.0f}% of the machine)"
                                if other is not None else "unknown"),
        f"- wall time of the whole benchmark: {meta['wall_s']:.0f} s (sum over runs of launch-to-exit: "
        f"{sum(r.get('launch_s', 0.0) for r in rows):.0f} s)",
        "",
        *command_section(command),
        "Each run, in a fresh temporary folder (`DIR`), `N` ranks, model `M`, compressor `SPEC`, seed `S`:", "",
        "```",
        meta["run_command"],
        "```", "",
    ]


def _intro(rows: list[dict], args, pcount: dict) -> list[str]:
    ok_rows = [r for r in rows if not r.get("error")]
    epochs = sorted({r["epochs"] for r in ok_rows})
    steps = sorted({(r["model"], r["ranks"], r["steps"]) for r in ok_rows})
    schedule = CLI_DEFAULTS if args.epochs is None else CLI_DEFAULTS.replace("20 epochs", f"{args.epochs} epochs")
    return [
        "# Gradient compression: accuracy vs bytes sent (dtrain DDP, digits, CPU)", "",
        f"{'**Quick smoke run** (`--quick`): few compressors and epochs, not the benchmark. ' if args.quick else ''}"
        f"Data-parallel training of the zoo's digits models (mlp: 64-128-10, "
        f"{pcount.get('mlp', 0):,} parameters; cnn: 2 conv 3x3 + max-pool, Linear 128, dropout 0.25, "
        f"{pcount.get('cnn', 0):,} parameters) with `dtrain train` under `mpiexec`, one run per compressor x model x "
        f"ranks x seed, one after the other. Schedule: the CLI defaults, {schedule} (split across the ranks), "
        "DDP with 25 MB buckets (one bucket here), ring all-reduce, overlap on. Within a model, ranks and seed every "
        "compressor starts from the same weights and sees the same batches; only gradient synchronisation differs.",
        "",
        f"- runs: {len(rows)} ({len(ok_rows)} succeeded), seeds {', '.join(map(str, args.seeds))}; completed epochs "
        f"per run {', '.join(map(str, epochs)) or '—'}; steps per run "
        + ", ".join(f"{m} at {ranks_label(n)} {s}" for m, n, s in steps) + ".",
        "- **test accuracy**: final epoch, digits test split (360 samples); with several seeds the mean and, in "
        "brackets, each seed. **Δ vs none**: percentage points against `none` with the same model, ranks and seed, "
        "averaged over seeds.",
        "- **bytes/step**: rank 0's `bytes_sent` (payload handed to MPI send calls for gradient synchronisation, "
        "compressed data and the 8-byte sample counts included) / steps, mean over the whole run. **fewer bytes "
        "than none**: none's bytes/step / this one's. **compression ratio**: `bytes_uncompressed` (what the plain "
        "ring would have sent for the same buckets) / `bytes_sent`, as dtrain reports it. **bytes/step, last "
        "epoch**: the last metrics record's `bytes_per_step` (the steady state; `powersgd` sends its first 10 "
        "steps uncompressed, its default `start=10`, which the run mean includes).",
        "- **ms/step**: `wall_s` of the training call (summary.json; per-epoch evaluation included, process start "
        "and MPI initialisation not) / steps, the fastest seed's (other processes only ever add time). Timings "
        "are noisy here: a run trains for 0.2-10 s, and "
        "other processes on the machine show up in them (the CSV's `other_cpu_s`: CPU time other processes used "
        "during each run).",
        "- How the payload travels decides how bytes scale with ranks: `none`, `fp16`, `bf16`, `randomk` and "
        "`powersgd` payloads are summable and ride the ring all-reduce (about 2(N-1)/N x payload per rank, like "
        "`none`, so their ratio stays put from 2 to 4 ranks); `topk`, `qsgd` and `signsgd` are all-gathered "
        "((N-1) x payload per rank), so their ratio against the ring shrinks as N grows.",
        "",
    ]


def write_outputs(out: Path, rows: list[dict], args, command: str, meta: dict) -> None:
    """Write compression.md, compression.csv and compression.png to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(rows)
    pcount = param_counts(args.models)
    cores = env.usable_cores()
    plot_error = plot(agg, args.models, args.ranks, args.specs, out / "compression.png")
    md = [*_intro(rows, args, pcount), *_oversubscribed(args, cores),
          *_results(rows, agg, args, pcount, plot_error), *_machine(rows, args, command, meta, cores)]
    (out / "compression.md").write_text("\n".join(md))
    write_csv(out / "compression.csv", CSV_FIELDS, [{k: v for k, v in r.items() if k in CSV_FIELDS} for r in rows])
