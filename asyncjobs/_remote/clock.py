"""Clock offsets (``invoke(clock=True)``): a host's wall clock measured against the controller's.

NTP's idea over the open SSH connection: a tiny loop on the host prints its clock each time the
controller sends it a newline; the controller notes its own clock just before sending (``t0``)
and when the answer arrives (``t1``). The host read its clock somewhere in between, so
``offset = host - (t0 + t1) / 2`` is off by at most half the round trip. Of ``SAMPLES`` round
trips the one with the smallest round trip wins (the least queueing, the tightest bound).

The host's clock is bash's ``$EPOCHREALTIME`` when the login shell is bash 5+ (a builtin: no
fork per sample), else GNU ``date +%s%N`` (a fork per sample, ~1 ms), else ``python3``'s
``time.time_ns()`` (one start, then sub-millisecond samples), else ``date +%s`` (whole seconds:
the error bound says so). ``check_host`` runs it in one channel, after the metadata probe
(``probe.py``) when that is asked for too: one channel open for both, before the command.
"""

from __future__ import annotations

import time
from typing import Any, Final

import anyio
import attrs

from .._core.errors import ConnectionFailed
from .._core.runner import Run
from .._ssh.session import SSHSession, map_ssh_errors
from .probe import MARK as PROBE_MARK
from .probe import PROBE_SCRIPT, HostInfo

#: Round trips per host; the one with the smallest round trip wins.
SAMPLES: Final = 5

#: The line that starts the samples, with the time source after it.
MARK: Final = "\x1eclock "

#: Each time source's resolution (seconds), part of the error bound.
RESOLUTION: Final = {"bash": 1e-6, "date": 1e-9, "python3": 1e-9, "seconds": 1.0}

CLOCK_SCRIPT: Final = r"""
if [ -n "${EPOCHREALTIME:-}" ]; then
  printf '\036clock bash\n'
  while read -r _; do printf '%s\n' "$EPOCHREALTIME"; done
  exit 0
fi
t=$(date +%s%N 2>/dev/null)
case $t in ''|*[!0-9]*)
  if command -v python3 >/dev/null 2>&1; then
    printf '\036clock python3\n'
    exec python3 -c 'import sys, time
for _ in sys.stdin: print(time.time_ns(), flush=True)'
  fi
  printf '\036clock seconds\n'
  while read -r _; do printf '%s000000000\n' "$(date +%s)"; done
  exit 0;;
esac
printf '\036clock date\n'
while read -r _; do date +%s%N; done
"""


@attrs.frozen
class ClockOffset:
    """A host's wall clock against the controller's, as ``invoke(clock=True)`` measured it
    before the command ran: ``child.clock``.

    ``offset`` is host minus controller, in seconds (a host 2 s ahead: ``2.0``); the true
    offset is within ``error`` of it (half the winning round trip ``rtt``, plus the host
    clock's resolution). ``source`` is the host's clock (``"date"``, ``"python3"``,
    ``"seconds"``), ``samples`` the round trips made, ``measured_at`` the controller's
    ``time.time()`` at the winning one.

    Records are stamped on the controller's clock already (``Record.time``: when the line
    arrived here); a time the host wrote (a benchmark's own timestamp in its JSON output) is
    put on the controller's clock with ``to_controller``."""

    offset: float
    rtt: float
    error: float
    samples: int
    source: str
    measured_at: float

    def to_controller(self, host_time: float) -> float:
        """A time read on the host's clock (seconds since the epoch) on the controller's."""
        return host_time - self.offset

    def to_host(self, controller_time: float) -> float:
        """A time on the controller's clock (``Record.time``) as the host's clock read it."""
        return controller_time + self.offset

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a results file's ``clock``)."""
        return attrs.asdict(self)


def host_ns(answer: bytes) -> int | None:
    """A host's answer as nanoseconds since the epoch: ``1700000000123456789`` (date, python3)
    or ``1700000000.123456`` (bash; a ``,`` in some locales); None if it is not a time."""
    text = answer.strip().decode("ascii", "replace").replace(",", ".")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or not (fraction.isdigit() or not fraction):
        return None
    if not fraction and "." not in text:
        return int(whole)
    return int(whole) * 10**9 + int((fraction + "0" * 9)[:9])


def best_sample(samples: list[tuple[float, float, int]], source: str) -> ClockOffset | None:
    """The offset from ``(t0, t1, host_ns)`` round trips: the smallest round trip wins."""
    if not samples:
        return None
    t0, t1, host_ns = min(samples, key=lambda s: s[1] - s[0])
    rtt = t1 - t0
    mid = (t0 + t1) / 2
    return ClockOffset(
        offset=host_ns / 1e9 - mid,
        rtt=rtt,
        error=rtt / 2 + RESOLUTION.get(source, 1.0),
        samples=len(samples),
        source=source,
        measured_at=mid,
    )


async def check_host(
    session: SSHSession, *, probe: bool, clock: bool, samples: int = SAMPLES
) -> tuple[HostInfo | None, ClockOffset | None]:
    """The probe and the clock measurement in one channel on ``session``: ``(host_info,
    clock)``, each None if not asked for (the clock also if the host printed no time)."""
    script = (PROBE_SCRIPT if probe else "") + (CLOCK_SCRIPT if clock else "")
    timeout = session.channel_timeout
    info_lines: list[str] = []
    found: list[tuple[float, float, int]] = []
    source = ""
    async with session.job_channel():
        with map_ssh_errors(session.where, timeout=timeout), anyio.fail_after(timeout):
            process = await session.connection.create_process(script, encoding=None)
            async with process:
                while line := (await process.stdout.readline()).decode("utf-8", "replace"):
                    if line.startswith(PROBE_MARK):
                        info_lines.append(line[len(PROBE_MARK) :].rstrip("\n"))
                    elif line.startswith(MARK):
                        source = line[len(MARK) :].strip()
                        break
                for _ in range(samples if source else 0):
                    t0 = time.time()
                    process.stdin.write(b"\n")
                    answer = await process.stdout.readline()
                    t1 = time.time()
                    ns = host_ns(answer)
                    if ns is None:
                        break
                    found.append((t0, t1, ns))
                process.stdin.write_eof()
                await process.wait_closed()
    info = HostInfo.from_lines(info_lines) if probe else None
    return info, best_sample(found, source) if clock else None


async def check_before(run: Run, session: SSHSession, *, probe: bool, clock: bool) -> bool:
    """``check_host`` for a fan-out's child before its command: the results on the job
    (``job.host_info``, ``job.clock``), a warning record if the clock could not be read.
    False (the child failed, its reason recorded) if the host could not be reached."""
    job = run.job
    try:
        job.host_info, job.clock = await check_host(session, probe=probe, clock=clock)
    except ConnectionFailed as exc:
        await run.append("error", exc)
        run.failed(exc)
        return False
    if clock and job.clock is None:
        await run.append(
            "warning",
            f"{session.where}: clock not measured: the host printed no time (no date, no "
            "python3?); child.clock is None",
        )
    return True
