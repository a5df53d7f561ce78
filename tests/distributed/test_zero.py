"""ZeroRedundancyOptimizer (ZeRO stage 1) under real mpiexec (see mpi_zero.py for the rank-side checks),
plus argument errors and the state-dict format in a world of one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dtrain as dt
import dtrain.distributed as dist
import dtrain.nn.functional as F
from dtrain import nn, optim

HERE = Path(__file__).parent
SCRIPT = str(HERE / "ranks" / "mpi_zero.py")


@pytest.mark.parametrize("algorithm", ["ring", "shm"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_zero_equals_one_process(run_mpi, n, algorithm):
    """float64 MLP, 20 steps of Adam, momentum SGD, AdamW (amsgrad, weight decay) and RMSprop on an even
    split of a batch of 12; Adam on an uneven split of 10 weighted by sample counts; two param groups with
    a StepLR schedule: parameters equal the single-process optimizer's (max abs diff <= 1e-12), are
    bit-identical on every rank, and the gathered state_dict equals the unsharded one (<= 1e-12). With the
    ring collectives and with the shared window (algorithm='shm')."""
    res = run_mpi(SCRIPT, n, "equivalence", "--algorithm", algorithm, timeout=300)
    assert f"equivalence OK on {n} ranks" in res.stdout


@pytest.mark.parametrize("n", [1, 2, 3])
def test_zero_in_a_shared_window_equals_ddp_over_shm(run_mpi, n):
    """algorithm='shm': float32 MLP, momentum SGD with weight decay, uneven shards weighted by sample counts,
    against DDP over the shm window and the unsharded SGD: the same bits at 1 and 2 ranks (within float32
    rounding at 3, where the chunks are summed in another order), the same bits on every rank; ``.grad``
    keeps the local gradient; the parameters live in the window and a replaced array is moved back in;
    zero_grad(set_to_none=False) accumulates; closing the communicator gives the parameters their own
    memory with the same values, and a step after it raises; a state_dict kept from before the close stays
    readable (the window is not freed under it), and a window nothing views any more is freed."""
    res = run_mpi(SCRIPT, n, "window", timeout=300)
    assert f"window OK on {n} ranks" in res.stdout


@pytest.mark.parametrize("n", [1, 2, 4])
def test_optimizer_state_per_rank_is_one_nth(run_mpi, n):
    """Adam's state on rank r is exactly its chunk_bounds chunk (2 moments x 8 bytes); the chunks add up."""
    res = run_mpi(SCRIPT, n, "memory", timeout=120)
    assert f"memory OK on {n} ranks" in res.stdout


@pytest.mark.parametrize("algorithm", ["ring", "shm"])
def test_ranks_with_an_empty_shard_take_part(run_mpi, algorithm):
    """2 parameters over 4 ranks: ranks 2 and 3 own nothing, yet step, gather and match the plain optimizer."""
    res = run_mpi(SCRIPT, 4, "empty-shard", "--algorithm", algorithm, timeout=120)
    assert "empty-shard OK on 4 ranks" in res.stdout


@pytest.mark.parametrize("saved, resumed, algorithm", [(2, 3, "ring"), (4, 1, "ring"), (1, 2, "ring"), (3, 2, "shm")])
def test_checkpoint_resumes_at_another_world_size(run_mpi, tmp_path, saved, resumed, algorithm):
    """10 Adam steps at one world size, the gathered state_dict saved; loaded at another world size (after the
    model weights: into the shared window with 'shm'), 10 more steps: the result equals 20 single-process steps
    (<= 1e-12)."""
    res = run_mpi(SCRIPT, saved, "save", tmp_path, "--algorithm", algorithm, timeout=120)
    assert f"save OK on {saved} ranks" in res.stdout
    res = run_mpi(SCRIPT, resumed, "resume", tmp_path, "--algorithm", algorithm, timeout=120)
    assert f"resume OK on {resumed} ranks (saved at {saved})" in res.stdout


# ------------------------------------------------------------------------------------------------
# A world of one, in this process
# ------------------------------------------------------------------------------------------------


def _model():
    dt.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))


def test_errors_name_the_rank_and_the_bad_value():
    dist.init()
    model = _model()
    with pytest.raises(TypeError, match=r"rank 0\).*optimizer_class must be a dtrain.optim.Optimizer subclass.*'adam'"):
        dist.ZeroRedundancyOptimizer(model.parameters(), "adam", lr=0.1)
    with pytest.raises(TypeError, match=r"the class, not an instance"):
        dist.ZeroRedundancyOptimizer(model.parameters(), optim.Adam(model.parameters()), lr=0.1)
    with pytest.raises(ValueError, match=r"rank 0\): got an empty parameter list"):
        dist.ZeroRedundancyOptimizer([], optim.Adam, lr=0.1)
    mixed = _model()
    other = np.float64 if mixed[2].bias.data.dtype == np.float32 else np.float32
    mixed[2].bias.data = mixed[2].bias.data.astype(other)
    with pytest.raises(TypeError, match=r"rank 0\): param group 0 mixes dtypes \['float32', 'float64'\].*params\[3\] "
                                        rf"{np.dtype(other)}"):
        dist.ZeroRedundancyOptimizer(mixed.parameters(), optim.Adam, lr=0.1)
    with pytest.raises(ValueError, match=r"rank 0\): building Adam: lr must be a positive finite number, got -1"):
        dist.ZeroRedundancyOptimizer(model.parameters(), optim.Adam, lr=-1)
    frozen = _model()
    frozen[0].weight.requires_grad = False
    with pytest.raises(ValueError, match=r"params\[0\] does not require grad"):
        dist.ZeroRedundancyOptimizer(frozen.parameters(), optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"rank 0\): algorithm must be 'ring' \(collectives over MPI\) or 'shm' .*"
                                         r"got 'nccl'"):
        dist.ZeroRedundancyOptimizer(model.parameters(), optim.SGD, algorithm="nccl", lr=0.1)
    half = _model()
    ps = list(half.parameters())
    for p in ps:
        p.data = p.data.astype(np.float16)
    with pytest.raises(ValueError, match=r"algorithm='shm' shares NumPy float32/float64 parameters between the ranks "
                                         r"of one node, but their dtype is float16; use algorithm='ring'"):
        dist.ZeroRedundancyOptimizer([{"params": ps[:2]}, {"params": ps[2:]}], optim.SGD, algorithm="shm", lr=0.1)
    assert all(p.data.flags.owndata for p in ps), "a refused optimizer moved parameters"
    zero = dist.ZeroRedundancyOptimizer(model.parameters(), optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"num_samples must be a non-negative number, got -3"):
        zero.step(num_samples=-3)
    with pytest.raises(ValueError, match=r"1 param group\(s\), this optimizer has 1|has 2 param group"):
        zero.load_state_dict({"state": {}, "param_groups": [{"params": [0]}, {"params": [1]}]})


def test_state_dict_matches_the_unsharded_optimizer_and_loads_back():
    dist.init()
    before = dt.get_default_dtype()
    dt.set_default_dtype(np.float64)
    try:
        ref, model = _model(), _model()
        ref_opt = optim.Adam(ref.parameters(), lr=0.05)
        zero = dist.ZeroRedundancyOptimizer(model.parameters(), optim.Adam, lr=0.05)
        x, y = np.random.default_rng(0).normal(size=(8, 4)), np.arange(8) % 2
        for m, o in ((ref, ref_opt), (model, zero)):
            for _ in range(3):
                o.zero_grad()
                F.cross_entropy(m(dt.tensor(x)), y).backward()
                o.step()
        a, b = zero.state_dict(), ref_opt.state_dict()
        assert a["param_groups"] == b["param_groups"]
        assert sorted(a["state"]) == sorted(b["state"]) == [0, 1, 2, 3]
        for i in b["state"]:
            assert a["state"][i]["step"] == 3
            for k in ("exp_avg", "exp_avg_sq"):
                assert a["state"][i][k].shape == b["state"][i][k].shape
                assert np.array_equal(a["state"][i][k], b["state"][i][k])
        fresh = dist.ZeroRedundancyOptimizer(_model().parameters(), optim.Adam, lr=0.5)
        fresh.load_state_dict(b)  # the plain optimizer's dict loads too
        assert fresh.param_groups[0]["lr"] == 0.05 and fresh.state_bytes() == zero.state_bytes() == 2 * 8 * 37
        bad = {"state": {**b["state"], 1: {**b["state"][1], "step": 2}}, "param_groups": b["param_groups"]}
        with pytest.raises(ValueError, match=r"state 'step' differs between the parameters of group 0"):
            fresh.load_state_dict(bad)
        bad = {"state": {**b["state"], 2: {**b["state"][2], "exp_avg": np.zeros(3)}}, "param_groups": b["param_groups"]}
        with pytest.raises(ValueError, match=r"state 'exp_avg' of parameter 2 has shape \(3,\), expected \(2, 5\)"):
            fresh.load_state_dict(bad)
    finally:
        dt.set_default_dtype(before)


@pytest.mark.parametrize("max_norm, clipped", [(0.05, True), (1e6, False)])
def test_max_grad_norm_clips_as_clip_grad_norm_does(max_norm, clipped):
    """In a world of one the averaged gradient is the local one: ZeRO's max_grad_norm = clip_grad_norm_ before the
    plain optimizer's step (the norm summed from the shard: equal to rounding), and a large bound changes nothing."""
    dist.init()
    before = dt.get_default_dtype()
    dt.set_default_dtype(np.float64)
    try:
        ref, model, free = _model(), _model(), _model()
        ref_opt = optim.SGD(ref.parameters(), lr=0.5, momentum=0.9)
        zero = dist.ZeroRedundancyOptimizer(model.parameters(), optim.SGD, lr=0.5, momentum=0.9)
        zero.max_grad_norm = max_norm
        free_opt = optim.SGD(free.parameters(), lr=0.5, momentum=0.9)
        x, y = np.random.default_rng(0).normal(size=(8, 4)), np.arange(8) % 2
        for m, o in ((ref, ref_opt), (model, zero), (free, free_opt)):
            for _ in range(3):
                o.zero_grad()
                F.cross_entropy(m(dt.tensor(x)), y).backward()
                if o is ref_opt:
                    nn.utils.clip_grad_norm_(m.parameters(), max_norm)
                o.step()
        for a, b in zip(ref.parameters(), model.parameters()):
            np.testing.assert_allclose(b.data, a.data, rtol=0, atol=1e-14)
        assert clipped == any(not np.allclose(b.data, c.data) for b, c in zip(model.parameters(), free.parameters()))
    finally:
        dt.set_default_dtype(before)
