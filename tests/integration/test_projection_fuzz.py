"""The differential fuzzer of SQL projections (``tests/projection_fuzz.py``) in CI.

Random schemas, queries of the incremental fragment and workloads; after every cycle each
projection equals its query run on the source (expected values come from the source
only). Fixed seeds: the same scenarios on every run. One source/serving database pair
per server is reused by all the scenarios of this module (:class:`projection_fuzz.Lane`).

- ``test_seeded_scenarios``: the bulk, engine cycles in process, on both servers;
- ``test_hypothesis_scenarios``: hypothesis drives the same generator (derandomized), so
  a failure shrinks to a minimal query and workload;
- ``test_pipeline_killed_at_random``: ``cdcflow run`` as a subprocess, SIGKILLed at random
  moments and restarted; compared at quiescence;
- ``test_regressions``: the minimal reproductions of the engine bugs the fuzzer found,
  each fixed: the projection equals its query after every cycle;
- ``test_limits``: values the engine cannot carry fail with one line that says so;
- ``test_long_run`` (slow): 2,000 cases, every 25th scenario through the pipeline.

The long run from the command line: ``python -m tests.projection_fuzz --cases 10000 --seed 1``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import projection_fuzz as fz

#: Scenarios per server and part (two parts per server): about 4.7 cases each, so 262
#: cases in CI (119 on the embedded server, 143 on the system one), 300 with the others.
SCENARIOS_PER_PART = 14
SEED_BASE = {"embedded": 0, "system": 500_000}


@pytest.fixture(scope="module")
def lane(pg_server) -> Iterator[fz.Lane]:
    lane = fz.Lane(pg_server)
    yield lane
    lane.close()


def _seeds(server: str, part: int) -> list[int]:
    start = SEED_BASE[server] + part * SCENARIOS_PER_PART
    return list(range(start, start + SCENARIOS_PER_PART))


def _explain(stats: fz.Stats, failures: list[fz.Failure]) -> str:
    shown = "\n\n".join(f"{f.line()}\n{f.repro}" for f in failures[:3])
    return f"{len(failures)} failures (seeds {sorted(stats.failing_seeds)}):\n{shown}\n\n{stats.report()}"


@pytest.mark.parametrize("part", [0, 1])
def test_seeded_scenarios(lane, pg_server, part):
    seeds = _seeds(pg_server.name, part)
    stats = fz.Stats()
    failures = fz.run_seeds(lane, seeds, stats)
    print(stats.report())
    assert not failures, _explain(stats, failures)
    assert stats.cases >= 40
    # A refused query is a generator bug unless the construct is outside the fragment.
    assert stats.refused + stats.source_errors <= 0.05 * stats.cases, stats.report()
    assert stats.engine_cycles >= 3 * stats.accepted


def test_hypothesis_scenarios(lane):
    from hypothesis import given

    stats = fz.Stats()

    @fz.hypothesis_settings(max_examples=5)
    @given(fz.scenarios())
    def check(sc: fz.Scenario) -> None:
        fz.run_scenario(lane, sc, stats, stop_on_failure=True)

    check()
    print(stats.report())
    assert stats.scenarios >= 5


def test_seed_replays_as_a_hypothesis_choice_sequence():
    """What lets ``shrink_seed`` start hypothesis from a failing seed: the seed's draws
    replayed as hypothesis choices give the same scenario."""
    for seed in (3, 500_017):
        want, choices = fz.scenario_for_seed(seed)
        got = fz.replay_choices(choices)
        assert [q.text for q in got.queries] == [q.text for q in want.queries]
        assert [t.ddl() for t in got.schema.tables] == [t.ddl() for t in want.schema.tables]
        assert got.initial == want.initial and got.cycles == want.cycles


#: Scenarios with several queries and cycles whose kill schedule kills 3 to 5 times.
PIPELINE_SEEDS = {"embedded": (21, 30), "system": (500_008, 500_031)}


@pytest.mark.parametrize("which", [0, 1])
def test_pipeline_killed_at_random(lane, pg_server, which):
    seed = PIPELINE_SEEDS[pg_server.name][which]
    sc, _ = fz.scenario_for_seed(seed)
    stats = fz.Stats()
    failures = fz.run_scenario_pipeline(lane, sc, stats, kill_seed=seed)
    print(stats.report())
    assert not failures, _explain(stats, failures)
    assert stats.comparisons >= 1 and stats.kills >= 1


@pytest.mark.parametrize("case", fz.REGRESSIONS, ids=lambda c: c.name)
def test_regressions(lane, case):
    problem = fz.check_sql_case(lane, case)
    assert problem is None, f"{case.name} (was: {case.bug})\n{case.query}\n{problem}"


@pytest.mark.parametrize("case", fz.LIMITS, ids=lambda c: c.name)
def test_limits(lane, case):
    problem = fz.check_sql_case(lane, case)
    assert problem is None, f"{case.name}\n{case.query}\n{problem}"


@pytest.mark.slow
def test_long_run(lane, pg_server):
    stats = fz.Stats()
    base = 10_000_000 + SEED_BASE[pg_server.name]
    seeds = list(range(base, base + 430))
    failures = fz.run_seeds(lane, seeds, stats, pipeline_every=25)
    print(stats.report())
    assert not failures, _explain(stats, failures)
