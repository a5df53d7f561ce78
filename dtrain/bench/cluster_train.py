"""One ``dtrain train`` job on a virtual cluster, as the cluster benchmarks (time-to-accuracy, straggler) run
it: the ranks train with ``--out`` to a run folder; this side records when each metrics record appeared
(wall-clock since the launch, seen from the host), the bytes every node put on its link, the job's output,
and reads back ``metrics.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import env
from .ranks import _checkout_path

__all__ = ["POLL_S", "TrainRun", "oversubscription_note", "train_on_cluster",
           "training_seconds"]

POLL_S = 0.05  # how often the host looks for a new metrics record (the resolution of `seen_s`)


@dataclass
class TrainRun:
    """What one ``dtrain train`` job on the cluster left: exit status, output, the time from launch to exit
    (``wall_s``), per node the bytes it sent onto its link (tc counters), the metrics records, the summary
    (None when the job failed before writing it) and, per record, the seconds from launch until it appeared."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    node_bytes: list[int]
    records: list[dict] = field(default_factory=list)
    summary: dict | None = None
    seen_s: list[float] = field(default_factory=list)

    @property
    def link_bytes(self) -> int:
        """Bytes the nodes sent onto their links during the job, in all."""
        return sum(self.node_bytes)

    def failure(self) -> str | None:
        """None when the job succeeded, else a line naming the exit status and the last line of stderr."""
        if self.returncode == 0 and self.summary is not None:
            return None
        last = next((ln for ln in reversed(self.stderr.splitlines()) if ln.strip()), "no output on stderr")
        return f"exit status {self.returncode}: {last.strip()}"


class _RecordWatcher:
    """Notes the time (since ``t0``) at which each new line of ``metrics.jsonl`` shows up, from a thread."""

    def __init__(self, path: Path, t0: float):
        self.path, self.t0, self.seen = path, t0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-watcher", daemon=True)
        self._thread.start()

    def _count(self) -> int:
        try:
            with open(self.path) as f:
                return sum(1 for line in f if line.endswith("\n"))
        except OSError:
            return 0

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self._catch_up()

    def _catch_up(self) -> None:
        now = time.perf_counter() - self.t0
        self.seen.extend([now] * (self._count() - len(self.seen)))

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        self._catch_up()  # records written after the last poll appeared by the job's end at the latest
        return self.seen


def train_on_cluster(cluster, n: int, flags: list[str], out_dir: Path, ppn: int = 1,
                     timeout: float | None = None, extra_env: dict[str, str] | None = None) -> TrainRun:
    """Run ``dtrain train *flags --out out_dir`` on ``n`` ranks of ``cluster`` (``ppn`` per node), capture its
    output, and return the :class:`TrainRun`. A previous run's results in ``out_dir`` are replaced."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = out_dir / "metrics.jsonl"
    for stale in (metrics, out_dir / "summary.json"):
        stale.unlink(missing_ok=True)  # the watcher must only see this run's records
    argv = [sys.executable, "-m", "dtrain", "train", *flags, "--out", str(out_dir), "--overwrite", "--no-progress"]
    before = cluster.counters()
    t0 = time.perf_counter()
    watcher = _RecordWatcher(metrics, t0)
    try:
        done = cluster.run(n, argv, ppn=ppn, env={**_checkout_path(), **(extra_env or {})}, timeout=timeout,
                           capture=True)
    finally:
        seen = watcher.stop()
    wall = time.perf_counter() - t0
    sent = [after[1] - prior[1] for prior, after in zip(before, cluster.counters())]
    run = TrainRun(argv, done.returncode, done.stdout or "", done.stderr or "", wall, sent, seen_s=seen)
    if metrics.is_file():
        run.records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    summary = out_dir / "summary.json"
    if summary.is_file():
        run.summary = json.loads(summary.read_text())
    return run


def training_seconds(record: dict, samples: int) -> float | None:
    """Training time up to ``record`` (seconds of the training loop, evaluation and checkpoints excluded),
    recovered from the record: ``samples_per_s`` is the run's samples so far over its training time, and
    ``samples`` is that sample count (epoch x training-set size for a complete epoch)."""
    rate = record.get("samples_per_s")
    return samples / rate if rate else None


def oversubscription_note(ranks: int) -> str | None:
    """A line labelling a run with more ranks than this machine's usable cores, else None."""
    cores = env.usable_cores()
    if ranks <= cores:
        return None
    return (f"**Oversubscribed:** {ranks} ranks on {cores} cores: the nodes share this machine's CPUs, so "
            "compute (and compression) time is inflated by ranks waiting for a core; link time is not.")
