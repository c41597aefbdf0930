"""``invoke``'s options for benchmark harnesses: ``--clock``, ``--parse json``, ``--probe``.

``--parse json`` prints each host's stdout as JSON lines with the host added (a data record:
``{"host": H, "data": V}``; a line that was not JSON: ``{"host": H, "error": ..., "lineno":
N, "line": ...}``), stderr stays text on stderr. ``--clock`` and ``--probe`` print what they
found per host at the end: JSON lines on stdout with ``--parse json`` (``{"host": H, "clock":
{...}, "host_info": {...}}``), else a line per host on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import click

from .._core.jsonlines import JsonLines
from .._core.models import Record
from ._terminal import BLOCKS, Screen, tag_bytes

if TYPE_CHECKING:
    from .._core.job import Job

F = TypeVar("F", bound=Callable[..., Any])


def harness_options(f: F) -> F:
    """The three flags, on ``invoke``."""
    f = click.option(
        "--probe",
        is_flag=True,
        help="First record each host's kernel, CPU model and count, memory, load and python3 "
        "(one round trip).",
    )(f)
    f = click.option(
        "--parse",
        type=click.Choice(["json"]),
        help="Parse each stdout line as JSON; print JSON lines with the host added.",
    )(f)
    f = click.option(
        "--clock",
        is_flag=True,
        help="First measure each host's clock against this one's (NTP-style, a few round trips).",
    )(f)
    return f


@attrs.frozen
class Harness:
    """What ``--clock``, ``--parse`` and ``--probe`` asked for."""

    clock: bool = False
    parse: str | None = None
    probe: bool = False

    def invoke_options(self) -> dict[str, Any]:
        """``JobManager.invoke``'s keywords: the CLI's raw chunks, or parsed lines."""
        options: dict[str, Any] = {"lines": self.parse is not None}
        if self.parse is not None:
            options["output"] = self.parse
        if self.clock or self.probe:
            options |= {"clock": self.clock, "probe": self.probe}
        return options

    def check(self, screen: Screen) -> None:
        """``--parse json`` prints JSON lines of its own: not inside ``--json``'s document."""
        if self.parse is not None and screen.json:
            raise click.UsageError(
                "--parse json prints JSON lines of its own; drop --json (or --parse)"
            )

    def follower(self, screen: Screen) -> Callable[[Job], Coroutine[Any, Any, None]]:
        async def follow(child: Job) -> None:
            out, err = screen.out, screen.err
            tag = tag_bytes(child.location, colour=screen.colour(err=True), error=True)
            async for record in child.stream_records(streams=None):
                value = record.value
                if record.stream == "output":
                    row = {"host": child.location, "data": value}
                elif hasattr(value, "to_dict") and hasattr(value, "lineno"):  # JsonLineError
                    row = {"host": child.location} | value.to_dict()
                else:  # stderr lines, and why a host failed: text, as without --parse
                    text = value if isinstance(value, bytes) else str(value).encode()
                    BLOCKS.add(err, tag + text + b"\n")
                    continue
                BLOCKS.add(out, (json.dumps(row) + "\n").encode())

        return follow

    def local_printer(self, screen: Screen) -> Callable[[Record], None]:
        """``--parse json`` without ``-H``: the job host's lines parsed here, as they come
        (a line over 1 MiB reaches us in pieces, ``MAX_LINE``: each piece an error row)."""
        parsers: dict[str, JsonLines] = {}

        def show(record: Record) -> None:
            host, value = record.location, record.value
            if record.stream != "output" or not isinstance(value, str | bytes):
                screen.record(record, tag=host)
                return
            parse = parsers.setdefault(host, JsonLines(f"job on {host}"))
            data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
            for stream, values in parse.feed(data + b"\n"):
                for item in values:
                    row = {"host": host}
                    row |= {"data": item} if stream == "output" else item.to_dict()
                    BLOCKS.add(screen.out, (json.dumps(row) + "\n").encode())

        return show

    def print_facts(self, screen: Screen, children: Sequence[Job]) -> None:
        """What ``--clock`` and ``--probe`` found, per host."""
        if not (self.clock or self.probe) or screen.json:  # --json: not in its document
            return
        for child in children:
            clock, info = child.clock, child.host_info
            if clock is None and info is None:
                continue
            if self.parse is not None:
                row: dict[str, Any] = {"host": child.location}
                row |= {"clock": clock.to_dict()} if clock is not None else {}
                row |= {"host_info": info.to_dict()} if info is not None else {}
                screen.write(json.dumps(row))
                continue
            if clock is not None:
                screen.write(
                    f"{child.location}: clock {clock.offset:+.6f} s (± {clock.error * 1e3:.3f} "
                    f"ms, {clock.source})",
                    err=True,
                )
            if info is not None:
                screen.write(f"{child.location}: {_info_text(info)}", err=True)


def _info_text(info: Any) -> str:
    memory = f"{info.memory_total / 2**30:.1f} GiB" if info.memory_total else "memory ?"
    load = " ".join(f"{x:g}" for x in info.load_average) if info.load_average else "?"
    return (
        f"{info.kernel or 'kernel ?'}, {info.cpu_count or '?'} CPUs "
        f"({info.cpu_model or 'model ?'}), {memory}, load {load}, {info.python or 'no python3'}"
    )
