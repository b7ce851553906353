"""The thread team follows how fast passes run: fewer threads while a neighbour holds a core, all of them when it
has gone. Observations are given, not timed, so nothing here depends on this CPU."""

from __future__ import annotations

from tandem.workers.team import Team


def _drive(team: Team, slowdown: dict[int, float], passes: int) -> list[int]:
    used = []
    for _ in range(passes):
        size = team.pick()
        used.append(size)
        team.observe(size, slowdown[size] * 0.01, 0.01)
    return used


def test_the_team_moves_to_the_faster_size_and_back():
    calls = []
    team = Team((2, 1), calls.append, explore_every=8)
    assert _drive(team, {2: 1.0, 1: 1.6}, 40).count(2) >= 35  # idle: the full team, with rare probes
    assert team.best() == 2 and calls[0] == 2
    used = _drive(team, {2: 3.5, 1: 1.4}, 60)  # a neighbour spins on one core
    assert team.best() == 1 and used[-16:].count(1) >= 14
    used = _drive(team, {2: 1.0, 1: 1.6}, 60)  # it has gone: the probes notice
    assert team.best() == 2 and used[-16:].count(2) >= 14
    assert calls == [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]  # only sets on a change


def test_an_idle_machine_stops_probing_once_the_smaller_team_is_learnt():
    # A smaller team's best-ever slowdown is a floor on what it would do now (a neighbour only slows it): while
    # the full team beats it, a probe cannot change the choice, so none is made.
    team = Team((2, 1), lambda n: None, explore_every=8, learn=3)
    used = _drive(team, {2: 1.0, 1: 1.7}, 400)
    assert used.count(1) == 3 and team.probes == 3 and abs(team.floor[1] - 1.7) < 1e-9
    # Once the full team runs slower than that floor, probing resumes and the team moves.
    used = _drive(team, {2: 2.5, 1: 1.8}, 80)
    assert team.best() == 1 and used[-16:].count(1) >= 14


def test_nothing_is_set_or_learnt_from_a_pass_without_a_cost_model():
    calls = []
    team = Team((2, 1), calls.append)
    team.observe(1, 0.5, 0.0)
    assert team.slowdown == {2: None, 1: None} and team.pick() == 2 and calls == [2]
