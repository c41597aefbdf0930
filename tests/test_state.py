"""The transition table, walked pair by pair, and the parent-state rule, exhaustively."""

from __future__ import annotations

import itertools

import pytest

from asyncjobs import JobState, JobStateError
from asyncjobs._core.state import (
    EVENT_TARGET,
    TRANSITIONS,
    Event,
    next_state,
    parent_state,
)

S = JobState
FINISHED = {S.COMPLETED, S.FAILED, S.STOPPED}

# The whole table, written out again by hand: a change to TRANSITIONS must be made twice.
EXPECTED = {
    S.NOT_STARTED: {Event.START: S.RUNNING, Event.FAIL: S.FAILED, Event.STOP: S.STOPPED},
    S.RUNNING: {
        Event.COMPLETE: S.COMPLETED,
        Event.FAIL: S.FAILED,
        Event.STOP: S.STOPPING,
        Event.BLOCK: S.BLOCKED,
        Event.DISCONNECT: S.DISCONNECTED,
        Event.SUSPEND: S.SUSPENDING,
    },
    S.STOPPING: {
        Event.STOPPED: S.STOPPED,
        Event.COMPLETE: S.COMPLETED,
        Event.FAIL: S.FAILED,
        Event.DISCONNECT: S.DISCONNECTED,
    },
    S.BLOCKED: {
        Event.UNBLOCK: S.RUNNING,
        Event.STOP: S.STOPPING,
        Event.FAIL: S.FAILED,
        Event.DISCONNECT: S.DISCONNECTED,
    },
    S.DISCONNECTED: {Event.RECONNECT: S.RUNNING, Event.STOP: S.STOPPING, Event.FAIL: S.FAILED},
    S.SUSPENDING: {Event.SUSPENDED: S.SUSPENDED, Event.STOP: S.STOPPING, Event.FAIL: S.FAILED},
    S.SUSPENDED: {Event.RESUME: S.RUNNING, Event.STOP: S.STOPPING, Event.FAIL: S.FAILED},
    S.COMPLETED: {},
    S.FAILED: {},
    S.STOPPED: {},
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(JobState, Event)))
def test_every_state_event_pair(state: JobState, event: Event) -> None:
    expected = EXPECTED[state].get(event)
    if expected is not None:
        assert next_state(state, event, job="job 7 ('x')") is expected
        return
    with pytest.raises(JobStateError) as info:
        next_state(state, event, job="job 7 ('x')")
    err = info.value
    assert err.job == "job 7 ('x')"
    assert err.from_state is state
    assert err.to_state is EVENT_TARGET[event]
    message = str(err)
    assert "job 7 ('x')" in message
    assert f"from {state.name} to {EVENT_TARGET[event].name}" in message


def test_table_matches_the_hand_written_one() -> None:
    flat = {(s, e): t for s, row in EXPECTED.items() for e, t in row.items()}
    assert dict(TRANSITIONS) == flat


def test_finished_states_are_terminal_and_flagged() -> None:
    assert {s for s in JobState if s.is_finished} == FINISHED
    assert not any(s in FINISHED for s, _ in TRANSITIONS)


def test_every_state_is_reachable_from_not_started() -> None:
    seen, todo = {S.NOT_STARTED}, [S.NOT_STARTED]
    while todo:
        state = todo.pop()
        for (s, _), t in TRANSITIONS.items():
            if s is state and t not in seen:
                seen.add(t)
                todo.append(t)
    assert seen == set(JobState)


def test_failure_is_reachable_from_every_unfinished_state() -> None:
    for state in JobState:
        if not state.is_finished:
            assert next_state(state, Event.FAIL) is S.FAILED


def test_final_state_message_says_it_is_final() -> None:
    with pytest.raises(JobStateError, match="COMPLETED is final"):
        next_state(S.COMPLETED, Event.START, job="job 1")


def _spec_parent(states: tuple[JobState, ...], stop_requested: bool) -> JobState:
    """spec §3, written independently of the implementation."""
    if not states:
        return S.COMPLETED
    if all(s in FINISHED for s in states):
        if S.FAILED in states:
            return S.FAILED
        if S.STOPPED in states or stop_requested:
            return S.STOPPED
        return S.COMPLETED
    for active in (S.RUNNING, S.STOPPING, S.BLOCKED, S.DISCONNECTED, S.SUSPENDING, S.SUSPENDED):
        if active in states:
            return active
    return S.NOT_STARTED if set(states) == {S.NOT_STARTED} else S.RUNNING


@pytest.mark.parametrize("size", [0, 1, 2, 3])
def test_parent_state_on_every_small_combination(size: int) -> None:
    for combo in itertools.product(JobState, repeat=size):
        for stop_requested in (False, True):
            got = parent_state(combo, stop_requested=stop_requested)
            assert got is _spec_parent(combo, stop_requested), (combo, stop_requested)
            # Order of children never matters.
            assert parent_state(reversed(combo), stop_requested=stop_requested) is got


def test_parent_state_spec_sentences() -> None:
    assert parent_state([S.RUNNING, S.FAILED, S.DISCONNECTED]) is S.RUNNING
    assert parent_state([S.COMPLETED, S.FAILED, S.STOPPED]) is S.FAILED
    assert parent_state([S.COMPLETED, S.STOPPED]) is S.STOPPED
    assert parent_state([S.COMPLETED, S.COMPLETED]) is S.COMPLETED
    assert parent_state([S.DISCONNECTED, S.COMPLETED]) is S.DISCONNECTED
    assert parent_state([S.NOT_STARTED, S.COMPLETED]) is S.RUNNING
    assert parent_state([S.NOT_STARTED, S.NOT_STARTED]) is S.NOT_STARTED


def test_state_repr_and_values_match_powershell_names() -> None:
    assert repr(S.NOT_STARTED) == "JobState.NOT_STARTED"
    assert S.NOT_STARTED.value == "NotStarted"
    assert S.DISCONNECTED.value == "Disconnected"
