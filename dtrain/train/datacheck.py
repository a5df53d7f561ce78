"""Do the ranks hold the same data? A fingerprint of each rank's data set, compared before training.

Ranks already compare their options (:func:`~dtrain.train.divergence.config_mismatch`), but the same
``--dataset npz:data.npz`` can name different files: MPMD launches in different working folders, node-local
copies that drifted, a file rewritten while a job started. Different sizes used to leave the ranks waiting
in different collectives until the deadline (each blaming the other); the same size with different contents
trained a silently wrong model. Each rank hashes what it loaded (sizes, shapes, dtypes, contents: BLAKE2b,
about 1 GB/s) and the ranks compare the fingerprints in one allgather, before the first data-dependent
collective.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

__all__ = ["data_fingerprint", "data_mismatch"]


def _part(dataset) -> dict:
    arrays = getattr(dataset, "arrays", None)
    if arrays is None:  # not an ArrayDataset: only its size can be compared
        return {"samples": len(dataset), "shapes": [], "dtypes": [], "digest": None}
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return {"samples": len(dataset), "shapes": [list(a.shape[1:]) for a in arrays],
            "dtypes": [a.dtype.str for a in arrays], "digest": h.hexdigest()}


def _source(name: str) -> str:
    """The spec, with its file resolved against this rank's working folder when it names one."""
    kind, _, arg = name.partition(":")
    path = arg.split(",")[0] if arg else ""
    if path and os.path.exists(path):
        return f"{kind}:{os.path.abspath(path)}"
    return name


def data_fingerprint(splits) -> dict:
    """What this rank loaded: per split its sample count, per-sample shapes, dtypes and a content digest,
    plus where it came from (``npz:/abs/path``)."""
    return {"source": _source(splits.name), "train": _part(splits.train), "test": _part(splits.test),
            "task": splits.task, "n_classes": splits.n_classes}


def _describe(fp: dict, split: str, key: str) -> str:
    value = fp[split][key] if split else fp[key]
    if key == "digest":
        return f"contents {str(value)[:12]}"
    return f"{value} {key}" if key == "samples" else f"{key} {value}"


def data_mismatch(everyone: list[dict]) -> str | None:
    """None when every rank's fingerprint is the same, else one line naming what differs, the ranks and the
    files each loaded."""
    first = everyone[0]
    odd = [r for r, fp in enumerate(everyone) if {k: v for k, v in fp.items() if k != "source"}
           != {k: v for k, v in first.items() if k != "source"}]
    if not odd:
        return None
    r = odd[0]
    differs = []
    for split in ("train", "test"):
        for key in ("samples", "shapes", "dtypes", "digest"):
            if everyone[r][split][key] != first[split][key]:
                differs.append(f"{split} {_describe(first, split, key)} on rank 0 but "
                               f"{_describe(everyone[r], split, key)} on rank {r}")
                break  # the first difference of a split says enough
    for key in ("task", "n_classes"):
        if everyone[r][key] != first[key]:
            differs.append(f"{key} {first[key]!r} on rank 0 but {everyone[r][key]!r} on rank {r}")
    others = f" (and rank{'s' if len(odd) > 2 else ''} {', '.join(map(str, odd[1:]))})" if len(odd) > 1 else ""
    return (f"the ranks loaded different data: {'; '.join(differs)}{others}; rank 0 read {first['source']}, "
            f"rank {r} read {everyone[r]['source']}: give every rank the same data set")
