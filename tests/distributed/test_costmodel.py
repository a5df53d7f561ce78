"""The alpha-beta-gamma cost model (dtrain.distributed.costmodel) against its closed forms and invariants."""

from __future__ import annotations

import math

import pytest

from dtrain.distributed.costmodel import (
    LINKS,
    MODELS,
    Compression,
    Link,
    StepModel,
    allreduce_time,
    bucket_sizes,
    calibrate_link,
    efficiency,
    overlap_exposed,
    step_time,
)

LINK = Link(alpha=10e-6, beta=1e-9, gamma=0.25e-9)
MB = 2**20


@pytest.mark.parametrize("n", [2, 3, 8, 64])
@pytest.mark.parametrize("m", [0.0, 4096.0, 100 * MB])
def test_ring_closed_form(n, m):
    expected = 2 * (n - 1) * (LINK.alpha + LINK.beta * m / n) + (n - 1) / n * m * LINK.gamma
    assert allreduce_time(m, n, "ring", LINK) == pytest.approx(expected)


def test_recursive_doubling_and_rabenseifner_closed_forms():
    m, n = 8 * MB, 16
    expected = 4 * (LINK.alpha + m * (LINK.beta + LINK.gamma))
    assert allreduce_time(m, n, "recursive_doubling", LINK) == pytest.approx(expected)
    assert allreduce_time(m, n, "rabenseifner", LINK) == pytest.approx(
        8 * LINK.alpha + 2 * 15 / 16 * m * LINK.beta + 15 / 16 * m * LINK.gamma)


def test_one_rank_costs_nothing():
    for alg in ("ring", "recursive_doubling", "rabenseifner", "mpi", "hierarchical"):
        assert allreduce_time(100 * MB, 1, alg, LINK) == 0.0


# ids without a bare "mpi": pytest-mpi skips tests carrying that keyword unless run with --with-mpi
@pytest.mark.parametrize("alg", ["ring", "recursive_doubling", "rabenseifner", "mpi", "hierarchical"],
                         ids=lambda a: f"alg={a}")
def test_monotone_in_size_and_ranks(alg):
    sizes = [0, 1e3, 1e5, 1e7, 1e9]
    for n in (2, 4, 32, 1024):
        t = [allreduce_time(m, n, alg, LINK, ranks_per_node=4) for m in sizes]
        assert t == sorted(t)
    t = [allreduce_time(1e7, n, alg, LINK) for n in (1, 2, 4, 8, 64, 4096)]
    assert t == sorted(t)


def test_hierarchical_is_the_ring_with_one_rank_per_node():
    for n in (2, 5, 64):
        for m in (1e3, 1e8):
            assert allreduce_time(m, n, "hierarchical", LINK, ranks_per_node=1) == pytest.approx(
                allreduce_time(m, n, "ring", LINK))


def test_hierarchical_helps_when_the_node_link_is_fast():
    slow, fast = LINKS["10GbE"], LINKS["nvlink"]
    m, n = 100e6, 512
    hier = allreduce_time(m, n, "hierarchical", slow, ranks_per_node=8, intra=fast)
    # the latency term shrinks by 8x: fewer ring steps over the slow network
    assert hier < allreduce_time(m, n, "ring", slow)


def test_recursive_doubling_wins_small_rabenseifner_wins_large():
    n = 64
    small, large = 1e3, 1e8
    assert allreduce_time(small, n, "recursive_doubling", LINK) < allreduce_time(small, n, "rabenseifner", LINK)
    assert allreduce_time(large, n, "rabenseifner", LINK) < allreduce_time(large, n, "recursive_doubling", LINK)
    # crossover where log2(n) alpha = (log2(n) - 2(n-1)/n) m beta' (beta' = beta + gamma, roughly)
    for m in (small, large):
        assert allreduce_time(m, n, "mpi", LINK) == min(allreduce_time(m, n, "recursive_doubling", LINK),
                                                       allreduce_time(m, n, "rabenseifner", LINK))


def test_compression_scales_the_bytes():
    m, n = 64 * MB, 16
    half = allreduce_time(m, n, "ring", LINK, compression=Compression(0.5))
    assert half == pytest.approx(allreduce_time(m / 2, n, "ring", LINK))
    gathered = allreduce_time(m, n, "ring", LINK, compression=Compression(0.01, "allgather"))
    k = 0.01 * m
    assert gathered == pytest.approx((n - 1) * (LINK.alpha + k * LINK.beta) + (n - 1) * k * LINK.gamma)
    with pytest.raises(ValueError, match="ratio"):
        Compression(0.0)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="unknown algorithm 'tree'"):
        allreduce_time(1.0, 2, "tree", LINK)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        allreduce_time(1.0, 0, "ring", LINK)
    with pytest.raises(ValueError, match=r"Link\.beta"):
        Link(1e-6, -1.0)


def test_bucket_sizes():
    assert bucket_sizes(10 * MB, 4 * MB) == [4 * MB, 4 * MB, 2 * MB]
    assert sum(bucket_sizes(123456789, 25 * MB)) == 123456789
    assert bucket_sizes(0, MB) == []


def test_overlap_hides_communication_but_never_below_the_bound():
    model = StepModel(params=25e6, compute_s_per_sample=2e-3)
    for n in (2, 16, 256, 4096):
        for link in LINKS.values():
            on = step_time(model, 32, n, link, bucket_cap_bytes=25 * MB)
            off = step_time(model, 32, n, link, bucket_cap_bytes=25 * MB, overlap=False)
            assert on.total <= off.total + 1e-12
            assert off.exposed == pytest.approx(off.comm)
            assert on.total >= max(on.compute, on.comm) - 1e-12
            assert on.total >= on.forward + on.comm - 1e-12  # communication starts after forward
            assert 0 <= on.exposed <= on.comm + 1e-12


def test_overlap_exposed_cases():
    # one bucket: nothing can start before backward ends
    assert overlap_exposed(1.0, [100.0], [0.3]) == pytest.approx(0.3)
    # two equal buckets, fast comm: only the last bucket's time sticks out
    assert overlap_exposed(1.0, [50.0, 50.0], [0.1, 0.1]) == pytest.approx(0.1)
    # comm slower than backward: the queue runs past the end
    assert overlap_exposed(1.0, [50.0, 50.0], [0.8, 0.8]) == pytest.approx(0.5 + 1.6 - 1.0)
    assert overlap_exposed(1.0, [50.0, 50.0], [0.1, 0.1], overlap=False) == pytest.approx(0.2)


def test_overlap_efficiency_zero_serialises():
    model = StepModel(params=1e6, compute_s_per_sample=1e-3)
    s = step_time(model, 64, 8, LINKS["10GbE"], bucket_cap_bytes=MB, overlap_efficiency=0.0)
    assert s.exposed == pytest.approx(s.comm)
    with pytest.raises(ValueError, match="overlap_efficiency"):
        step_time(model, 64, 8, LINK, overlap_efficiency=1.5)


def test_efficiency_is_one_at_one_worker_and_falls_with_workers():
    for model in MODELS.values():
        effs = [efficiency(model, 32, n, LINKS["10GbE"]) for n in (1, 8, 64, 512, 4096)]
        assert effs[0] == pytest.approx(1.0)
        assert all(0 < e <= 1 + 1e-12 for e in effs)
        assert effs == sorted(effs, reverse=True)


def test_calibrate_link_recovers_alpha_and_beta():
    truth = Link(25e-6, 0.4e-9, 0.1e-9)
    rows = [{"size_bytes": m, "world_size": n, "time_s": allreduce_time(m, n, "ring", truth)}
            for n in (2, 4) for m in (4096, 65536, 2**20, 2**24)]
    fitted = calibrate_link(rows, gamma=truth.gamma)
    assert fitted.alpha == pytest.approx(truth.alpha, rel=1e-6)
    assert fitted.beta == pytest.approx(truth.beta, rel=1e-6)
    with pytest.raises(ValueError, match=">= 2 measurements"):
        calibrate_link(rows[:1], gamma=0.0)


def test_link_from_bandwidth():
    link = Link.from_bandwidth(100, 5e-6)
    assert 1 / link.beta == pytest.approx(12.5e9)
    assert math.isclose(link.alpha, 5e-6)


def test_cli_has_a_scaling_benchmark():
    from dtrain.cli import build_parser

    args = build_parser().parse_args(["bench", "scaling", "--ranks", "1,2,4", "--model", "cnn", "--modes", "weak"])
    assert args.ranks == [1, 2, 4] and args.model == "cnn" and args.modes == ["weak"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "scaling", "--ranks", "0,2"])
