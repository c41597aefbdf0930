"""Warm fan-outs on the local job host: ``asyncjobs invoke`` runs its fan-out here, on the SSH
connections this host holds (``persist`` seconds after their last use), so the next invoke to
the same hosts opens channels instead of connecting (OpenSSH's ControlPersist).

The job host loads this module on the first warm op (it imports asyncssh: the job host itself,
and the bundle remote hosts run, never do). A run is an ordinary ``JobManager.invoke`` in the
host's one warm ``JobManager`` (its ``persist=`` pool is the held connections); its children's
records are taken receive-once and handed to the controller in batches (``events``): the
controller mirrors them into its own parent and children (``warmclient``). A run belongs to
the connection that started it: when that connection ends (the controller exited or was
killed), the run is stopped, its remote process groups killed as any stop kills them.

The host's socket directory is the user's own (0700), so a held connection is never lent to
another user.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any, Final

import anyio
import anyio.abc
import attrs

from .._core.job import Job
from .._core.models import Buffer
from .._core.table import watch_first
from .._local.manager import JobManager

#: How often idle held connections are looked at (and closed past their ``persist``).
EXPIRE_EVERY: Final = 1.0
#: Once ``events`` has something to say, it waits this long for more (fewer answers).
_GATHER: Final = 0.002
#: An ``events`` answer carries about this many bytes of output at most (well inside a frame).
_BUDGET: Final = 4 << 20
#: Bytes of one child's output held for its controller before its follower waits.
_CHILD_BUDGET: Final = 1 << 20


#: The run whose fan-out the current task works for: its children's tasks inherit it, so a
#: notice logged while connecting (a host key added by accept-new) reaches that run's
#: controller, which logs it there, where its user sees it.
_RUN: ContextVar[_Run | None] = ContextVar("asyncjobs_warm_run", default=None)


class _Notices(logging.Handler):
    """The ``asyncjobs`` logger's warnings, to the controller of the run they happened in."""

    def emit(self, record: logging.LogRecord) -> None:
        run = _RUN.get()
        if run is not None:
            run.put([-1, "notice", record.levelno, record.getMessage()])


def _value(value: Any) -> Any:
    """A record's value as wire data: an exception (a connection failure) as its class and
    message, for the controller to raise as ours again."""
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": str(value)}
    return value


def _reason(job: Job) -> dict[str, str] | None:
    reason = job.reason
    return None if reason is None else {"error": type(reason).__name__, "message": str(reason)}


@attrs.define(eq=False)
class _Run:
    """One warm fan-out: its parent here, who started it, and, per child, the events its
    controller has not read yet (``boxes``). A child's box is bounded (its follower waits
    while it is full), and a child the controller can't take records for now (its buffer
    there is full: ``take(paused=)``) gets none sent: its box fills, its follower waits, its
    buffer here fills, its host waits. The other children go on, as they would there."""

    id: int
    owner: object
    parent: Job = attrs.field(init=False)
    boxes: dict[int, list[list[Any]]] = attrs.Factory(dict)  # -1: notices
    sizes: dict[int, int] = attrs.Factory(dict)  # bytes of record values per box
    ended: int = 0
    changed: anyio.Event = attrs.Factory(anyio.Event)
    drained: anyio.Event = attrs.Factory(anyio.Event)

    def put(self, event: list[Any], size: int = 0) -> None:
        i = event[0]
        self.boxes.setdefault(i, []).append(event)
        self.sizes[i] = self.sizes.get(i, 0) + size
        self.changed.set()

    def ready(self, paused: set[int]) -> bool:
        return any(box and i not in paused for i, box in self.boxes.items())

    def take(self, paused: set[int]) -> list[list[Any]]:
        """The events of the children not ``paused``, about ``_BUDGET`` bytes at most."""
        events: list[list[Any]] = []
        room = _BUDGET
        for i, box in self.boxes.items():
            if not box or i in paused:
                continue
            if room <= 0:
                break
            taken = 0
            for event in box:
                events.append(event)
                taken += 1
                if event[1] == "record":
                    room -= _size(event[3])
                    if room <= 0:
                        break
            del box[:taken]
            self.sizes[i] = sum(_size(e[3]) for e in box if e[1] == "record")
        drained, self.drained = self.drained, anyio.Event()  # every follower waits on one
        drained.set()
        return events

    async def follow(self, i: int, child: Job) -> None:
        """Child ``i``'s records into its box as they come (receive-once), then its end."""
        async for record in child.stream_records(streams=None):
            while self.sizes.get(i, 0) >= _CHILD_BUDGET:
                await self.drained.wait()  # the next take() sets it (and makes a new one)
            value = _value(record.value)
            self.put([i, "record", record.stream, value, record.time], _size(value))
        await child.wait()
        timings = getattr(child, "timings", None)
        self.ended += 1
        self.put([
            i, "end", child.state.value, child.exit_status, _reason(child),
            None if timings is None else timings.to_dict(),
        ])  # fmt: skip

    @property
    def done(self) -> bool:
        return self.ended == len(self.parent.children) and not any(self.boxes.values())


def _size(value: Any) -> int:
    return len(value) if isinstance(value, bytes | str) else 64


def _on_start(run: _Run, i: int) -> Any:
    """A listener: report child ``i``'s start once (before any of its records)."""
    seen = [False]

    def listener(child: Job) -> None:
        if not seen[0] and child.state.value != "NotStarted":
            seen[0] = True
            run.put([i, "started"])

    return listener


class WarmHost:
    """The job host's warm fan-outs and the connections they hold."""

    def __init__(self) -> None:
        self._jobs: JobManager | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._runs: dict[int, _Run] = {}
        self._next = 1

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Its lifetime, in the job host's task group: the warm manager, and the expiry of idle
        connections; cancelled with the host (every run stopped, every connection closed)."""
        notices = _Notices(logging.WARNING)
        logger = logging.getLogger("asyncjobs")
        logger.addHandler(notices)
        try:
            async with JobManager() as jobs, anyio.create_task_group() as tg:
                self._jobs, self._tg = jobs, tg
                task_status.started()
                while True:
                    await anyio.sleep(EXPIRE_EVERY)
                    await jobs.close_idle_connections()
        finally:
            logger.removeHandler(notices)

    def busy(self) -> bool:
        """Runs going, or connections held: the host should not exit idle yet."""
        return bool(self._runs) or bool(self._jobs and self._jobs.held_connections())

    async def invoke(
        self, owner: object, *, targets: list[str], command: str, options: dict[str, Any],
        throttle: int, timeout: float | None, idle_timeout: float | None, retries: int,
        max_startups: int | None, input: bytes | None, fail_fast: bool, persist: float,
        host_buffer: int,
    ) -> dict[str, Any]:  # fmt: skip
        """Start a fan-out on the held connections; its id and its children's locations."""
        assert self._jobs is not None
        run = _Run(self._next, owner)
        token = _RUN.set(run)  # the children's tasks start in this context (see _RUN)
        try:
            run.parent = await self._jobs.invoke(
            targets, command, throttle_limit=throttle, timeout=timeout,
            on_failure="fail_fast" if fail_fast else "continue", retries=retries,
            buffer=Buffer(max_items=None, max_bytes=host_buffer, mode="block"), lines=False,
            input=input, max_startups=max_startups, idle_timeout=idle_timeout,
            persist=persist if persist > 0 else None, **options,
        )  # fmt: skip
        finally:
            _RUN.reset(token)
        parent = run.parent
        self._next += 1
        self._runs[run.id] = run
        assert self._tg is not None
        for i, child in enumerate(parent.children):
            watch_first(child, _on_start(run, i))
            self._tg.start_soon(run.follow, i, child)
        return {"run": run.id, "locations": [c.location for c in parent.children]}

    def _run(self, owner: object, run_id: int) -> _Run:
        from .._core.errors import NoSuchJob

        run = self._runs.get(run_id)
        if run is None or run.owner is not owner:
            raise NoSuchJob(f"no warm invoke {run_id} on this connection; start one first")
        return run

    async def events(
        self, owner: object, run: int, wait: float | None, paused: list[int]
    ) -> dict[str, Any]:
        """The run's events since the last call (none of the ``paused`` children's), waiting
        up to ``wait`` s for a first one."""
        found = self._run(owner, run)
        held = set(paused)
        if not found.ready(held) and not found.done:
            deadline = anyio.current_time() + (wait or 0.0)
            while not found.ready(held) and anyio.current_time() < deadline:
                found.changed = anyio.Event()
                with anyio.move_on_after(deadline - anyio.current_time()):
                    await found.changed.wait()
            await anyio.sleep(_GATHER)  # what else comes in the same moment: one answer
        events = found.take(held)
        out: dict[str, Any] = {"events": events, "done": found.done}
        if found.done:
            parent = found.parent
            await parent.wait()
            first = next(
                (i for i, c in enumerate(parent.children) if c.reason is parent.reason), None
            )
            out["parent"] = [parent.state.value, parent.exit_status, first]
            del self._runs[found.id]
            await self._remove(parent)
        return out

    async def _remove(self, parent: Job) -> None:
        assert self._jobs is not None
        await self._jobs.remove(parent, force=True)  # its children with it

    async def stop(self, owner: object, run: int) -> None:
        await self._run(owner, run).parent.stop()

    async def drop(self, owner: object) -> None:
        """The connection ``owner`` ended: stop its runs and forget them."""
        for run in [r for r in self._runs.values() if r.owner is owner]:
            del self._runs[run.id]
            with anyio.CancelScope(shield=True):
                await run.parent.stop()
                await self._remove(run.parent)

    def connections(self) -> list[dict[str, Any]]:
        return [] if self._jobs is None else self._jobs.held_connections()
