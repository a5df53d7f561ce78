"""The scaling sweep over variants: every combination of ``--model``, ``--overlap`` and ``--bucket-mb`` of
``dtrain bench scaling``, one combined report.

What it runs
    For each variant (model x overlap on/off x bucket size) and each world size n of ``--ranks``, one
    launch of the scaling benchmark's rank side (:func:`dtrain.bench.scaling.launch`), on the virtual
    cluster when ``--cluster`` is given (brought up once with its K nodes; n ranks use the first
    ceil(n / M) of them). Two launches are shared rather than repeated:

    * the 1-rank world runs once per model: DDP at one rank communicates nothing, so neither the
      bucket size nor overlap changes what it measures (its rows carry ``shared_1rank: true``);
    * the all-reduce probes for the cost model run with the first variant only (they do not depend on
      the model); every other variant's worlds carry a copy of them (``probes_from``).

Outputs in ``--out`` (default a fresh ``bench-results/DATE-TIME/scaling``): ``sweep.csv`` and ``sweep.json``
(every row, the probes, the cost-model check and the extrapolation), ``sweep.md`` (tables, the
overlap analysis computed from the numbers, the cost model, the exact command), ``efficiency.png``,
``breakdown.png``, ``extrapolation.png``, and each variant's own scaling report in a subfolder.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

from .machine import machine_info
from .oncluster import cluster_label, cluster_session
from .report import command_line, default_out
from .scaling_report import summarize, write_report

__all__ = ["label", "measure_variants", "result_args", "sweep", "variants"]


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def variants(args) -> list[argparse.Namespace]:
    """One copy of ``args`` per combination of ``--model``, ``--overlap`` and ``--bucket-mb`` (each a single
    value there), in that nesting order."""
    return [argparse.Namespace(**{**vars(args), "model": m, "overlap": o, "bucket_mb": b})
            for m in _listed(args.model) for o in _listed(args.overlap) for b in _listed(args.bucket_mb)]


def result_args(args) -> dict:
    """``args`` as JSON-ready values for the results (no argparse internals)."""
    return {k: (str(v) if k in ("out", "cluster") and v is not None else v) for k, v in vars(args).items()
            if k not in ("func", "worker", "bench")}


def label(v) -> str:
    """A variant's short name, also its subfolder: ``mlp-overlap-on-4mib``."""
    return f"{v.model}-overlap-{'on' if v.overlap else 'off'}-{v.bucket_mb:g}mib"


def _launch_variant(launch, v, first: bool, n: int, tmp: Path, cluster) -> dict:
    # Only the first variant probes the all-reduce (the probes do not depend on the model).
    va = v if first else argparse.Namespace(**{**vars(v), "probe_repeats": 0})
    return launch(n, va, tmp / f"{label(v)}-{n}.json", cluster)


def _shared(world: dict, v, source: str) -> dict:
    """A copy of another variant's 1-rank world, relabelled with this variant's (unused) DDP settings."""
    w = copy.deepcopy(world)
    for r in w["records"]:
        r.update(bucket_mb=v.bucket_mb, overlap=v.overlap, shared_1rank=source)
    return w


def _own_buckets(worlds: list[dict]) -> None:
    """Give a shared 1-rank world this variant's bucket layout, read from its largest world (the layout
    depends on the bucket size and the model, not on the world size)."""
    ref = {r["mode"]: r["buckets_bytes"] for r in worlds[-1]["records"]}
    for w in worlds:
        for r in w["records"]:
            if r.get("shared_1rank") and r["mode"] in ref:
                r["buckets_bytes"] = list(ref[r["mode"]])


def measure_variants(args, launch, vs: list, cluster, tmp: Path) -> dict[str, list[dict]]:
    """The worlds of every variant, by label, each launched by ``launch(n, variant, json_path, cluster)``
    (:func:`dtrain.bench.scaling.launch`) as the module docstring says."""
    cores, out, ones, probes = machine_info()["cores"], {}, {}, {}
    for i, v in enumerate(vs):
        worlds = []
        for n in args.ranks:
            if n == 1 and v.model in ones:
                worlds.append(_shared(ones[v.model][1], v, ones[v.model][0]))
                continue
            over = " (oversubscribed)" if n > cores else ""
            print(f"scaling sweep: {label(v)}, {n} rank(s){over} ...", flush=True)
            w = _launch_variant(launch, v, i == 0, n, tmp, cluster)
            if i == 0:
                probes[n] = w["probes"]
            elif n in probes:
                w["probes"] = {**w["probes"], "allreduce": probes[n]["allreduce"],
                               "allreduce_worker": probes[n].get("allreduce_worker", []), "probes_from": label(vs[0])}
            if n == 1:
                ones[v.model] = (label(v), w)
            worlds.append(w)
        _own_buckets(worlds)
        out[label(v)] = worlds
    return out


def sweep(args, launch) -> int:
    """Run every variant of ``args`` through ``launch`` (:func:`dtrain.bench.scaling.launch`, passed in so that
    this module does not import the benchmark that imports it) and write the combined report."""
    from .scaling_sweep_report import write_sweep

    vs = variants(args)
    t0, mach = time.perf_counter(), machine_info()
    with tempfile.TemporaryDirectory() as tmp, cluster_session(args) as cluster:
        worlds = measure_variants(args, launch, vs, cluster, Path(tmp))
    out = args.out or default_out("scaling")
    out.mkdir(parents=True, exist_ok=True)
    command = command_line()
    results = []
    for v in vs:
        rows = summarize(worlds[label(v)], mach["cores"])
        result = {"label": label(v), "args": result_args(v), "placement": cluster_label(v), "machine": mach,
                  "worlds": worlds[label(v)], "rows": rows, "wall_s": time.perf_counter() - t0}
        (out / label(v)).mkdir(exist_ok=True)
        # The variant's own scaling.md (its tables and cost-model check; the plots are the combined ones).
        write_report(out / label(v), result, rows, command, plots=False)
        results.append(result)
    files = write_sweep(out, args, results, mach, command, time.perf_counter() - t0)
    (out / "sweep.json").write_text(json.dumps({"args": result_args(args), "machine": mach, "variants": results},
                                               indent=1, default=str))
    print(f"\nwrote {', '.join(str(out / f) for f in files)} and one folder per variant (its scaling.md)")
    return 0
