"""Feed every mutated input file of tests/test_fuzz_inputs.py to `dtrain train` and print a markdown table per
kind of input (config, npz, text, mnist, checkpoint, latest.json): how many ended in one error line naming the
file (exit 2), how many still trained (a mutation that left the file valid), the slowest, and any that broke
the rule (a traceback, another exit status, no file named, a hang). Exits 1 if any did.

    OMP_NUM_THREADS=1 python tests/stress/input_fuzz_report.py
"""

from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: test_fuzz_inputs
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: dtrain

import test_fuzz_inputs as fuzz


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="dtrain-fuzz-"))
    fuzz._warm_up(tmp)
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    slowest: dict[str, float] = collections.defaultdict(float)
    problems = []
    for case_id, argv, path in fuzz._inputs(tmp):
        kind = case_id.split("/")[0]
        run_dir = tmp / "runs" / case_id.replace("/", "_")
        run_dir.mkdir(parents=True)
        status, err, seconds = fuzz._run_forked(argv, run_dir)
        slowest[kind] = max(slowest[kind], seconds)
        errors = [line for line in err.splitlines() if line.startswith("dtrain train: error:")]
        if status == 0:
            rows[kind]["trained"] += 1
        elif status == 2 and len(errors) == 1 and "Traceback" not in err and fuzz._named(path, errors[0]):
            rows[kind]["one line"] += 1
        else:
            rows[kind]["broke the rule"] += 1
            problems.append(f"{case_id}: exit {status}: {err.strip().splitlines()[-1:] or ['(nothing)']}")
    print("| input | cases | exit 2, one line naming the file | trained (still valid) | broke the rule | slowest (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    total = collections.Counter()
    for kind, c in rows.items():
        total.update(c)
        print(f"| {kind} | {sum(c.values())} | {c['one line']} | {c['trained']} | {c['broke the rule']} | "
              f"{slowest[kind]:.2f} |")
    print(f"| all | {sum(total.values())} | {total['one line']} | {total['trained']} | {total['broke the rule']} | "
          f"{max(slowest.values()):.2f} |")
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
