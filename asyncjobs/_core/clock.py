"""The clock that grace periods and timeouts are measured on, replaceable in tests.

A runner that waits a period (a command's stop: TERM, ``stop_grace``, KILL; a worker process's
``stop_grace``) asks its ``Clock`` for it instead of calling anyio, so a test can pass a
``FakeClock``, on which every period passes at once, and prove the escalation without waiting
for it (STYLE #7). The clock is handed down (``JobManager(clock=...)``, then the runners): no
module-level state. ``REAL`` is anyio's own time.
"""

from __future__ import annotations

from typing import Final, Protocol, final

import anyio
import anyio.lowlevel
import attrs


class Clock(Protocol):
    """What a runner may ask of time."""

    def now(self) -> float:
        """Seconds on this clock (only differences mean something)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    def move_on_after(self, seconds: float) -> anyio.CancelScope:
        """A cancel scope whose deadline is ``seconds`` from now (``anyio.move_on_after``)."""
        ...


@final
class RealClock:
    """anyio's clock: the event loop's monotonic time."""

    __slots__ = ()

    def now(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def move_on_after(self, seconds: float) -> anyio.CancelScope:
        return anyio.move_on_after(seconds)

    def __repr__(self) -> str:
        return "<asyncjobs RealClock>"


#: The clock everything uses unless a test passes another.
REAL: Final = RealClock()


@final
@attrs.define(eq=False)
class FakeClock:
    """A clock for tests on which time passes instantly: ``sleep(s)`` and ``move_on_after(s)``
    move ``now()`` on by ``s`` at once. A ``move_on_after`` scope is already past its deadline,
    so what waits inside it is cancelled at its first checkpoint, as if the period had run out.
    ``waited`` lists every period asked for, in order, for tests to assert on."""

    time: float = 0.0
    waited: list[float] = attrs.field(factory=list)

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self._advance(seconds)
        await anyio.lowlevel.checkpoint()

    def move_on_after(self, seconds: float) -> anyio.CancelScope:
        self._advance(seconds)
        scope = anyio.CancelScope()
        scope.cancel()
        return scope

    def _advance(self, seconds: float) -> None:
        self.waited.append(seconds)
        self.time += seconds
