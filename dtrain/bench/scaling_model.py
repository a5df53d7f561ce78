"""The scaling sweep's cost-model check: calibrate dtrain.distributed.costmodel on the probes, predict each
measured step, and the Markdown for it (also used by ``dtrain bench simulate``)."""

from __future__ import annotations

import numpy as np

__all__ = ["calibration", "calibration_lines", "predict_record", "validate", "validation_table"]


def calibration(result: dict, calib_world: int = 2) -> dict:
    """The link (alpha, beta, gamma) and the copy rate from the probes at ``calib_world`` ranks (else the
    smallest world > 1): alpha and beta fitted to the all-reduce times through the worker thread (the
    path DDP's buckets take), gamma from the timed additions. Returns ``link``, ``copy_s_per_byte``,
    ``calib_world``, ``fit_algorithm``."""
    from dtrain.distributed.costmodel import Link, calibrate_link

    worlds = {w["world_size"]: w for w in result["worlds"]}
    multi = sorted(k for k in worlds if k > 1)
    if not multi:
        raise ValueError("the cost model needs a world of >= 2 ranks to calibrate the link")
    k = calib_world if calib_world in worlds else multi[0]
    probes = worlds[k]["probes"]
    alg = result["args"]["algorithm"]
    fit_alg = alg if alg == "mpi" else "ring"
    # The best of the repeats: on a shared host the median carries other processes' time slices.
    rows = [{**r, "time_s": r["min_time_s"]} for r in probes.get("allreduce_worker", probes["allreduce"])
            if r["algorithm"] == fit_alg]
    probe_link = calibrate_link(rows, probes["gamma_s_per_byte"], algorithm=fit_alg,
                                name=f"probe: fitted at {k} ranks to the best of {result['args']['probe_repeats']} "
                                     f"{fit_alg} all-reduces through the worker thread")
    cal = {"probe_link": probe_link, "link": probe_link, "copy_s_per_byte": probes["copy_s_per_byte"],
           "calib_world": k, "fit_algorithm": fit_alg}
    # DDP's own path costs more than the bare all-reduce (per-bucket hand-off to the worker thread, the
    # compressor's bookkeeping, the wait): keep the probe's alpha and choose the effective beta so that
    # the model's communication of DDP's buckets equals the measured "communication alone" at this world
    # size (a separate measurement from the training steps that are validated).
    recs = [r for r in worlds[k]["records"] if r["comm_s"] > 0]
    if recs:
        def comm_at(beta: float) -> float:
            trial = {**cal, "link": Link(probe_link.alpha, beta, probe_link.gamma)}
            return float(np.mean([predict_record(r, trial, 10**6, 0.0, 0.0, 0.0).comm for r in recs]))

        target = float(np.mean([r["comm_s"] for r in recs]))
        c0, c1 = comm_at(0.0), comm_at(1e-9)
        beta = max(0.0, (target - c0) / ((c1 - c0) / 1e-9)) if c1 > c0 else probe_link.beta
        cal["link"] = Link(probe_link.alpha, beta, probe_link.gamma,
                           f"DDP-effective: probe alpha and gamma, beta fitted to DDP's communication alone "
                           f"at {k} ranks")
    return cal


def _model_algorithm(alg: str) -> str:
    return {"ring": "ring", "mpi": "mpi", "hierarchical": "hierarchical", "nccl": "ring"}[alg]


def predict_record(r: dict, cal: dict, cores: int, compute_s: float, optimizer_s: float, fixed_s: float):
    """The cost model's StepBreakdown for one measured record, with the given local phase times."""
    from dtrain.distributed.costmodel import Compression, StepModel, step_time

    n, b = r["world_size"], r["per_rank_batch"]
    model = StepModel(params=r["params"], compute_s_per_sample=compute_s / b,
                      backward_fraction=r["backward_s"] / max(r["compute_s"], 1e-12),
                      optimizer_s_per_param=optimizer_s / r["params"], fixed_s=fixed_s,
                      copy_s_per_byte=cal["copy_s_per_byte"], name=r["model"])
    comp = Compression(min(1.0, max(1e-6, r["wire_ratio"])), r["exchange"])
    # A rank's communication thread runs on a core of its own only if the host has two per rank.
    eff = 1.0 if cores >= 2 * n else 0.0
    # Ranks per node as they ran: all on one host's memory, or --cluster's M per node on a virtual cluster.
    return step_time(model, b, n, cal["link"], _model_algorithm(r["algorithm"]),
                     buckets=[float(x) for x in r["buckets_bytes"]], ranks_per_node=r.get("ppn", n),
                     compression=comp, overlap=r.get("overlap", True), overlap_efficiency=eff,
                     control_message=True)


def validate(result: dict, calib_world: int = 2) -> tuple[list[dict], dict]:
    """Predicted vs measured step time for every measured (mode, world size) of ``result``.

    Two predictions: (a) with the compute and optimizer times measured *alone* (no communication) at
    the same world size (so contention for cores and memory is in the input, and the model adds the
    communication and its overlap), and (b) with the 1-rank times (pure extrapolation; ignores contention).
    """
    cal = calibration(result, calib_world)
    cores = result["machine"]["cores"]
    base = {r["mode"]: r for w in result["worlds"] for r in w["records"] if w["world_size"] == min(
        x["world_size"] for x in result["worlds"])}
    rows = []
    for w in result["worlds"]:
        for r in w["records"]:
            n = r["world_size"]
            r0 = base[r["mode"]]
            fixed = max(0.0, r0["step_s"] - r0["compute_s"] - r0["optimizer_s"] - r0["exposed_s"])
            pred = predict_record(r, cal, cores, r["compute_alone_s"], r["optimizer_alone_s"], fixed)
            per_sample = r0["compute_alone_s"] / r0["per_rank_batch"]
            pred1 = predict_record(r, cal, cores, per_sample * r["per_rank_batch"], r0["optimizer_alone_s"], fixed)
            predp = predict_record(r, {**cal, "link": cal["probe_link"]}, cores, r["compute_alone_s"],
                                   r["optimizer_alone_s"], fixed)
            rows.append({"mode": r["mode"], "world_size": n, "oversubscribed": n > cores,
                         "per_rank_batch": r["per_rank_batch"], "measured_s": r["step_s"],
                         "predicted_s": pred.total, "error": pred.total / r["step_s"] - 1,
                         "predicted_probe_s": predp.total, "error_probe": predp.total / r["step_s"] - 1,
                         "predicted_1rank_s": pred1.total, "error_1rank": pred1.total / r["step_s"] - 1,
                         "measured_compute_s": r["compute_s"], "compute_alone_s": r["compute_alone_s"],
                         "measured_comm_s": r["comm_s"], "predicted_comm_s": pred.comm,
                         "measured_exposed_s": r["exposed_s"], "predicted_exposed_s": pred.exposed,
                         "in_calibration": n == cal["calib_world"]})
    rows.sort(key=lambda v: (v["mode"], v["world_size"]))
    return rows, cal


def validation_table(rows: list[dict], goal: float = 0.20) -> list[str]:
    out = ["| mode | ranks | batch/rank | measured step ms | predicted ms | error | within 20 %? "
           "| comm alone: measured / predicted ms | exposed: measured / predicted ms "
           "| compute in step / alone ms | raw-probe link: ms, error | 1-rank compute: ms, error |",
           "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for v in rows:
        note = "yes" if abs(v["error"]) <= goal else "**no**"
        if v["oversubscribed"]:
            note += " (oversubscribed)"
        out.append(f"| {v['mode']} | {v['world_size']}{' (over)' if v['oversubscribed'] else ''} | "
                   f"{v['per_rank_batch']} | {v['measured_s'] * 1e3:.1f} | {v['predicted_s'] * 1e3:.1f} | "
                   f"{v['error']:+.0%} | {note} | "
                   f"{v['measured_comm_s'] * 1e3:.1f} / {v['predicted_comm_s'] * 1e3:.1f} | "
                   f"{v['measured_exposed_s'] * 1e3:.1f} / {v['predicted_exposed_s'] * 1e3:.1f} | "
                   f"{v['measured_compute_s'] * 1e3:.1f} / {v['compute_alone_s'] * 1e3:.1f} | "
                   f"{v['predicted_probe_s'] * 1e3:.1f}, {v['error_probe']:+.0%} | "
                   f"{v['predicted_1rank_s'] * 1e3:.1f}, {v['error_1rank']:+.0%} |")
    return out


def calibration_lines(cal: dict) -> list[str]:
    return [*(_link_line(cal[k]) for k in ("probe_link", "link")), *_calibration_rest(cal)]


def _link_line(link) -> str:
    return (f"- link ({link.name}): alpha = {link.alpha * 1e6:.1f} us, beta = {link.beta * 1e9:.3f} ns/B "
            f"({1 / link.beta / 1e9 if link.beta else float('inf'):.2f} GB/s), gamma = {link.gamma * 1e9:.3f} ns/B "
            f"({1 / link.gamma / 1e9 if link.gamma else float('inf'):.2f} GB/s of additions)")


def _calibration_rest(cal: dict) -> list[str]:
    return [f"- DDP pack/unpack copy: {cal['copy_s_per_byte'] * 1e9:.3f} ns/B",
            "- compute and optimizer: measured per world size with every rank training alone at once (no "
            "communication); overlap efficiency 1 where the host has >= 2 cores per rank, else 0 (the "
            "communication thread shares the rank's core with backward)"]

