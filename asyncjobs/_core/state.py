"""Job states and the transition table: pure data, no I/O, no anyio.

The table is the single source of truth: ``Job`` applies events through it, the tests walk every
(state, event) pair, and ``docs/states.md`` draws its diagram from it. A parent job's state is
never stored; ``parent_state`` derives it from its children's states.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from .errors import JobArgumentError, JobStateError


class JobState(enum.Enum):
    """The state of a job (PowerShell's ``JobState``, without ``AtBreakpoint``)."""

    NOT_STARTED = "NotStarted"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"
    BLOCKED = "Blocked"
    SUSPENDED = "Suspended"
    DISCONNECTED = "Disconnected"
    SUSPENDING = "Suspending"
    STOPPING = "Stopping"

    @property
    def is_finished(self) -> bool:
        """``COMPLETED``, ``FAILED`` and ``STOPPED`` are terminal: nothing leaves them."""
        return self.value in _FINISHED_VALUES  # hashing a str, not the enum: hot in wait loops

    def __repr__(self) -> str:
        return f"JobState.{self.name}"


_FINISHED = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.STOPPED})
_FINISHED_VALUES = frozenset(s.value for s in _FINISHED)
#: The values (PowerShell names) of the states that are not finished, as the store and the
#: wire carry them.
ACTIVE_VALUES: tuple[str, ...] = tuple(s.value for s in JobState if s not in _FINISHED)


class Event(enum.Enum):
    """What a runner (or a user's call) reports about a job."""

    START = "start"  # it really runs now
    COMPLETE = "complete"  # it ended well
    FAIL = "fail"  # it ended badly, or its runner died
    STOP = "stop"  # stop() was called
    STOPPED = "stopped"  # the stop took effect: nothing of it runs any more
    BLOCK = "block"  # it waits for an answer from its user
    UNBLOCK = "unblock"
    DISCONNECT = "disconnect"  # the link to where it runs was lost (it may still run there)
    RECONNECT = "reconnect"
    SUSPEND = "suspend"
    SUSPENDED = "suspended"
    RESUME = "resume"


S, E = JobState, Event

# (state, event) -> next state. Anything not here is illegal. Finished states have no entries.
TRANSITIONS: Mapping[tuple[JobState, Event], JobState] = {
    (S.NOT_STARTED, E.START): S.RUNNING,
    (S.NOT_STARTED, E.FAIL): S.FAILED,
    (S.NOT_STARTED, E.STOP): S.STOPPED,  # stopped before it ever ran: nothing to wait for
    (S.RUNNING, E.COMPLETE): S.COMPLETED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.STOP): S.STOPPING,
    (S.RUNNING, E.BLOCK): S.BLOCKED,
    (S.RUNNING, E.DISCONNECT): S.DISCONNECTED,
    (S.RUNNING, E.SUSPEND): S.SUSPENDING,
    (S.STOPPING, E.STOPPED): S.STOPPED,
    (S.STOPPING, E.COMPLETE): S.COMPLETED,  # it finished on its own before the stop landed
    (S.STOPPING, E.FAIL): S.FAILED,
    (S.STOPPING, E.DISCONNECT): S.DISCONNECTED,
    (S.BLOCKED, E.UNBLOCK): S.RUNNING,
    (S.BLOCKED, E.STOP): S.STOPPING,
    (S.BLOCKED, E.FAIL): S.FAILED,
    (S.BLOCKED, E.DISCONNECT): S.DISCONNECTED,
    (S.DISCONNECTED, E.RECONNECT): S.RUNNING,
    (S.DISCONNECTED, E.STOP): S.STOPPING,
    (S.DISCONNECTED, E.FAIL): S.FAILED,
    (S.SUSPENDING, E.SUSPENDED): S.SUSPENDED,
    (S.SUSPENDING, E.STOP): S.STOPPING,
    (S.SUSPENDING, E.FAIL): S.FAILED,
    (S.SUSPENDED, E.RESUME): S.RUNNING,
    (S.SUSPENDED, E.STOP): S.STOPPING,
    (S.SUSPENDED, E.FAIL): S.FAILED,
}

# What each event aims at; used to name the to-state when the move is illegal.
EVENT_TARGET: Mapping[Event, JobState] = {
    E.START: S.RUNNING,
    E.COMPLETE: S.COMPLETED,
    E.FAIL: S.FAILED,
    E.STOP: S.STOPPING,
    E.STOPPED: S.STOPPED,
    E.BLOCK: S.BLOCKED,
    E.UNBLOCK: S.RUNNING,
    E.DISCONNECT: S.DISCONNECTED,
    E.RECONNECT: S.RUNNING,
    E.SUSPEND: S.SUSPENDING,
    E.SUSPENDED: S.SUSPENDED,
    E.RESUME: S.RUNNING,
}

del S, E


def next_state(state: JobState, event: Event, *, job: str = "job") -> JobState:
    """Look ``(state, event)`` up in ``TRANSITIONS``; an illegal move raises ``JobStateError``
    naming the job, the event and both states."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        target = EVENT_TARGET[event]
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s is state)
        hint = (
            f"events allowed there: {', '.join(allowed)}" if allowed else f"{state.name} is final"
        )
        raise JobStateError(
            f"{job} can't go from {state.name} to {target.name} (event {event.value!r}; {hint})",
            job=job,
            from_state=state,
            to_state=target,
        ) from None


def state_named(text: str) -> JobState:
    """The state a user named: ``"RUNNING"``, ``"Running"``, ``"not-started"``, any case."""
    key = text.upper().replace("-", "_")
    for state in JobState:
        if key in (state.name, state.value.upper()):
            return state
    raise JobArgumentError(f"unknown job state {text!r}; states are {[s.name for s in JobState]}")


_ACTIVE_ORDER = (
    JobState.RUNNING,
    JobState.STOPPING,
    JobState.BLOCKED,
    JobState.DISCONNECTED,
    JobState.SUSPENDING,
    JobState.SUSPENDED,
)


def parent_state(children: Iterable[JobState], *, stop_requested: bool = False) -> JobState:
    """The state of a parent job, derived from its children's states (spec §3).

    All finished: ``FAILED`` if any failed, else ``STOPPED`` if any stopped (or the parent was
    stopped), else ``COMPLETED``. Otherwise the most active child wins: any ``RUNNING`` →
    ``RUNNING``; then ``STOPPING``, ``BLOCKED``, ``DISCONNECTED`` (none running),
    ``SUSPENDING``, ``SUSPENDED``. Children that have not started yet beside finished ones mean the
    parent is under way (``RUNNING``); all not started → ``NOT_STARTED``. No children →
    ``COMPLETED`` (nothing to do).
    """
    states = set(children)
    if all(s.is_finished for s in states):
        if JobState.FAILED in states:
            return JobState.FAILED
        if JobState.STOPPED in states or (stop_requested and states):
            return JobState.STOPPED
        return JobState.COMPLETED
    for candidate in _ACTIVE_ORDER:
        if candidate in states:
            return candidate
    # Only NOT_STARTED and finished children are left.
    return JobState.NOT_STARTED if states == {JobState.NOT_STARTED} else JobState.RUNNING
