"""The benchmark's account of the machine during a run (bench/load.py): what processes other
than the server under test, wrk and the database used. Issue 17's "later rounds are slower"
was such load — the service got half the cores it had in round 1 at about the same CPU per
request — and nothing in the figures said so."""

from bench.load import disturbed, leak_check, others_cores
from bench.server import busy_seconds

STAT = "cpu  100 5 50 1000 200 30 70 2 0 0\ncpu0 50 2 25 500 100 15 35 1 0 0\n"


def test_machine_busy_time_is_what_processes_ran():
    """user + nice + system + steal: idle and I/O wait are not busy, and interrupt time is
    mostly the run's own loopback traffic (not charged to any process)."""
    assert busy_seconds(STAT, ticks=100) == (100 + 5 + 50 + 2) / 100


def test_others_are_the_machine_minus_server_wrk_and_database():
    before = {"busy": 10.0, "postgres": {7: 1.0, 8: 9.0}}
    after = {"busy": 16.0, "postgres": {7: 1.25, 9: 0.25}}
    # 6 s busy over 3 s: 2.5 s server, 0.5 s wrk, 0.5 s database (7 and 9; 8 ended, its
    # 9 s are not the run's) → 2.5 s others
    assert others_cores(before, after, server_cpu=2.5, wrk_cpu=0.5, elapsed=3.0) == {
        "others_cores": 0.83,
        "database_cores": 0.17,
    }


def test_runs_disturbed_by_other_processes_are_listed():
    runs = [
        {("service", "validate"): {"others_cores": 0.1}},
        {
            ("service", "validate"): {"others_cores": 0.9},
            ("hello", "healthz"): {"others_cores": 0.3},
        },
    ]
    assert disturbed(runs) == [(2, "service/validate", 0.9), (2, "hello/healthz", 0.3)]


def test_drain_waits_for_every_worker_not_only_the_one_that_answered(monkeypatch):
    """The healthz request that drains the backlog is answered by one worker while the
    others still serve the last requests wrk left (after 16 connections of logins: all 5
    workers busy ~0.2 s more); the next run would pay for them."""
    from bench import load
    from bench.server import Server

    server = Server("fake", {})
    server.url = "http://127.0.0.1:9"
    states = {1: ["running", "running", "idle"], 2: ["running", "idle"]}
    monkeypatch.setattr(load, "request", lambda *_args: (200, {"ok": True}))
    monkeypatch.setattr(Server, "workers", lambda self: [1, 2])
    monkeypatch.setattr(
        Server,
        "worker_idle",
        lambda self, pid: (states[pid].pop(0) if states[pid] else "idle") == "idle",
    )
    load.drain(server)
    assert states == {1: [], 2: []}


def test_the_leak_check_subtracts_what_the_token_cache_took_and_nothing_else():
    mib = 2**20
    rss = [{1: 100.0, 2: 100.0}, {1: 101.0, 2: 101.0}, {1: 102.5, 2: 102.5}, {1: 104.0, 2: 104.0}]
    # worker 1's cache took 2.5 MiB of its 3 MiB; worker 2's only 0.5 MiB
    caches = [{}, {1: 0.5 * mib, 2: 0.5 * mib}, {1: 2.0 * mib}, {1: 3.0 * mib, 2: 1.0 * mib}]
    check = leak_check(rss, caches)
    assert check["caches_mib_after_round_1"] == {1: 2.5, 2: 0.5}
    assert check["worst_growth_mib"] == 3.0
    assert (check["worst_mib"], check["verdict"]) == (2.5, "grows")  # worker 2: 3.0 - 0.5
    caches[-1][2] = 2.0 * mib
    assert leak_check(rss, caches)["verdict"] == "flat"
    assert leak_check(rss)["verdict"] == "grows"  # without the caches' figures: raw growth


def test_instructions_per_request_are_the_difference_of_two_runs():
    """bench/instructions.py: callgrind's count of a run of N requests and of 2N (the same
    start-up and warm-up in both): what N more requests cost, divided by N."""
    import pytest

    from bench.instructions import collected, per_request

    stderr = "==4242== Events    : Ir\n==4242== Collected : 8247601899\n==4242== \n"
    assert collected(stderr) == 8_247_601_899
    with pytest.raises(RuntimeError, match="counted nothing"):
        collected("valgrind: command not found\n")
    asked: list[int] = []

    def count(n: int) -> int:
        asked.append(n)
        return 5_000_000_000 + 3_700_000 * n  # start-up, then 3.7M a request

    assert per_request(count, 300)["instructions_per_request"] == 3_700_000
    assert asked == [300, 600]
    with pytest.raises(ValueError, match="300 or more"):
        per_request(count, 100)


def test_what_runs_under_the_bearer_check_is_not_the_bearer_checks():
    """bench/pieces.py: the service's `jwt_required` wrapper calls the view, so what the
    view does (an order's SQL, say) is the view's, not the access token's (the full run of
    2026-12-02 put 57 % of a paid order under "access token")."""
    from bench.pieces import classify

    wrapper = ("verified", "app/http/bearer.py")
    sql = ("execute", "sqlalchemy/engine/base.py")
    assert classify([wrapper, ("create_order", "app/orders/routes.py"), sql]) != classify(
        [wrapper, ("verify_jwt_in_request", "app/http/bearer.py")]
    )
    assert classify([wrapper, ("verify_jwt_in_request", "app/http/bearer.py")]).startswith(
        "access token"
    )
