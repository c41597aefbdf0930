"""The job host's sessions: the hello that attaches a connection to one, and their states.

A session is named, survives its connections and the host (its row in the store), and is in
one ``SessionState``: ``Opened`` while a controller is attached (one at a time: a second is
refused, naming the program that holds it), ``Disconnected`` once it left (its jobs run on and
its idle timeout counts down), ``Closed`` when it is closed or idle past its timeout. A
connection that only looks (``get_sessions``) is an observer: it has no session of its own.
"""

from __future__ import annotations

import time
from typing import Final

import anyio
import attrs

from .._version import __version__
from .delivery import Leases
from .directory import describe_process
from .hostjob import Holding, held_by
from .hostlog import log
from .protocol import (
    PROTOCOL_VERSION,
    ErrorInfo,
    FrameStream,
    Hello,
    Response,
    SessionInfo,
    SessionState,
    Welcome,
)
from .store import SessionRow, Store, StoreError

DEFAULT_IDLE_TIMEOUT: Final = 2 * 3600.0  # PowerShell's default for disconnected sessions


@attrs.define(eq=False)
class Session:
    """A session as the running host knows it (its row in the store says the rest)."""

    name: str
    observer: bool = False  # a connection that only looks (sessions, get): no session
    attached: bool = False
    buffering: Holding | None = None  # its output_buffering; None: keep all
    changed: anyio.Event = attrs.field(factory=anyio.Event)
    leases: Leases = attrs.field(factory=Leases)  # what its connection took, unacknowledged
    holder: str | None = None  # who attached it: "pid 7 (python3 x.py) since 10:41:07"

    def wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


def _over_ssh(pid: int) -> str:
    """``, over SSH from ADDR`` when ``pid`` is a bridge of a controller on another machine
    (its environment names the SSH connection), else ""."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    except OSError:
        return ""
    connection = env.get(b"SSH_CONNECTION", b"").split()
    return f", over SSH from {connection[0].decode(errors='replace')}" if connection else ""


class Sessions:
    """The sessions of the host: those attached or seen since it started (``known``) over the
    store's rows of all."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.known: dict[str, Session] = {}

    def recover(self) -> None:
        """At start: a session left ``Opened`` had its connection die with the old host."""
        for row in self.store.sessions():
            if row.state == SessionState.OPENED:
                self.put(
                    attrs.evolve(row, state=SessionState.DISCONNECTED, disconnected_at=time.time())
                )

    async def greet(self, frames: FrameStream, pid: int | None = None) -> Session | None:
        """Read the hello: attach to (or create) the session it names, or refuse it (one in
        use is refused naming the program that holds it, as far as the kernel says)."""
        hello = Hello.from_wire(await frames.receive())
        if hello.session is None and not hello.create:
            session = Session("", observer=True)  # get_sessions(): no session of its own
            await frames.send(self.welcome("").to_wire())
            return session
        name = hello.session or self._new_name()
        row = self.store.session(name)
        if row is None or row.state == SessionState.CLOSED:
            if hello.session is not None and not hello.create:
                await self._refuse(
                    frames,
                    f"no session named {name!r} on this job host; sessions: "
                    f"{', '.join(self._open_names()) or 'none'}",
                )
                return None
            row = SessionRow(
                name=name,
                state=SessionState.OPENED,
                idle_timeout=hello.idle_timeout or DEFAULT_IDLE_TIMEOUT,
                # Unless asked to block or drop, a job keeps all its output: the store is
                # the spill (disk, not memory), and a detached job must never stall.
                output_buffering=hello.output_buffering or "spill",
                created_at=time.time(),
                disconnected_at=None,
            )
        session = self.known.setdefault(name, Session(name))
        session.buffering = held_by(row.output_buffering)
        if session.attached:
            holder = f": {session.holder}" if session.holder else ""
            await self._refuse(
                frames,
                f"session {name!r} is in use by another connection{holder}; it is free again "
                "when that program disconnects or exits",
            )
            return None
        session.attached = True
        session.holder = None
        if pid is not None:
            since = time.strftime("%H:%M:%S")
            session.holder = f"{describe_process(pid)} since {since}{_over_ssh(pid)}"
        session.wake()
        try:
            self.put(attrs.evolve(row, state=SessionState.OPENED, disconnected_at=None))
            await frames.send(self.welcome(name).to_wire())
        except BaseException:  # the controller left before it heard the welcome
            self.detach(session)
            raise
        return session

    def welcome(self, name: str) -> Welcome:
        return Welcome(
            PROTOCOL_VERSION, f"asyncjobs {__version__}", name or "-", self._open_names()
        )

    async def _refuse(self, frames: FrameStream, message: str) -> None:
        """Refuse a hello: the id-0 response; the connection is closed after it."""
        refusal = Response(0, False, None, ErrorInfo("AsyncJobsError", message))
        await frames.send(refusal.to_wire())

    def _open_names(self) -> list[str]:
        return [r.name for r in self.store.sessions() if r.state != SessionState.CLOSED]

    def _new_name(self) -> str:
        taken = {r.name for r in self.store.sessions()}
        n = len(taken) + 1
        while f"Session{n}" in taken:
            n += 1
        return f"Session{n}"

    def put(self, row: SessionRow) -> None:
        """Store a session's row; on a full disk the host goes on with it in memory (its
        jobs and reads do not depend on it) and says so in its log."""
        try:
            self.store.put_session(row)
        except StoreError as exc:
            log(f"session {row.name!r}: its state {row.state} is not stored ({exc})")

    def detach(self, session: Session) -> None:
        """The connection of ``session`` ended: the session (unless an observer) is
        disconnected (what it held unacknowledged is for the caller to give back)."""
        if session.observer:
            return
        session.attached = False
        session.wake()
        row = self.store.session(session.name)
        if row is not None and row.state == SessionState.OPENED:
            changed = attrs.evolve(
                row, state=SessionState.DISCONNECTED, disconnected_at=time.time()
            )
            self.put(changed)

    def buffering_of(self, name: str) -> Holding | None:
        """The session's output_buffering while it is disconnected, else None."""
        session = self.known.get(name)
        if session is not None and session.attached:
            return None
        if session is not None:
            return session.buffering
        row = self.store.session(name)
        return held_by(row.output_buffering) if row is not None else None

    def expired(self, now: float) -> list[SessionRow]:
        """The disconnected sessions idle past their timeout at ``now``."""
        return [
            row
            for row in self.store.sessions()
            if row.state == SessionState.DISCONNECTED
            and row.disconnected_at is not None
            and now - row.disconnected_at > row.idle_timeout
        ]

    def closed(self, row: SessionRow) -> None:
        """``row``'s session is closed (its jobs are stopped)."""
        self.put(attrs.evolve(row, state=SessionState.CLOSED))

    def listed(self) -> list[SessionInfo]:
        """``sessions``: every session not closed, with its number of jobs."""
        counts: dict[str | None, int] = {}
        for row in self.store.jobs():
            counts[row.session] = counts.get(row.session, 0) + 1
        return [
            SessionInfo(
                name=r.name,
                state=SessionState(r.state).value,  # type: ignore[arg-type]
                job_count=counts.get(r.name, 0),
                idle_timeout=r.idle_timeout,
            )
            for r in self.store.sessions()
            if r.state != SessionState.CLOSED
        ]
