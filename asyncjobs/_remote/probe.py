"""The host metadata probe (``invoke(probe=True)``): what a benchmark result needs beside it.

One small POSIX ``sh`` script, run on the open connection before the command (in the same
channel as the clock measurement when both are asked for, see ``clock.check_host``), prints
``key=value`` lines: the kernel (``uname -srm``), the CPU model and count, the memory total,
the load average and ``python3 --version``. It reads ``/proc`` with shell builtins where it can
(Linux), falls back to ``sysctl`` (the BSDs, macOS), and leaves out what a host doesn't have:
a missing value is ``None``, never an error. What comes back is data, parsed here, never run.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

#: Starts every line the probe prints (a benchmark's own output never reaches this channel).
MARK: Final = "\x1eprobe "

# Builtins only for /proc (no fork per file): read, while, case. sysctl where /proc is absent.
PROBE_SCRIPT: Final = r"""
p() { printf '\036probe %s=%s\n' "$1" "$2"; }
p kernel "$(uname -srm 2>/dev/null)"
m=
if [ -r /proc/cpuinfo ]; then
  while IFS=: read -r k v; do
    case $k in 'model name'*|'Processor'*|'cpu model'*|'Model'*) m=${v# }; break;; esac
  done < /proc/cpuinfo
fi
[ -n "$m" ] || m=$(sysctl -n machdep.cpu.brand_string 2>/dev/null || sysctl -n hw.model 2>/dev/null)
p cpu_model "$m"
p cpu_count "$(getconf _NPROCESSORS_ONLN 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null)"
t=
if [ -r /proc/meminfo ]; then
  while read -r k v u; do
    case $k in MemTotal:) t=$((v * 1024)); break;; esac
  done < /proc/meminfo
fi
[ -n "$t" ] || t=$(sysctl -n hw.memsize 2>/dev/null || sysctl -n hw.physmem 2>/dev/null)
p memory_total "$t"
l=
if [ -r /proc/loadavg ]; then read -r a b c _ < /proc/loadavg; l="$a $b $c"
else l=$(sysctl -n vm.loadavg 2>/dev/null | tr -d '{}'); fi
p load_average "$l"
p python "$(python3 --version 2>/dev/null </dev/null)"
"""


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _load(text: str | None) -> tuple[float, float, float] | None:
    try:
        one, five, fifteen = (float(x) for x in (text or "").split())
    except ValueError:
        return None
    return (one, five, fifteen)


@attrs.frozen
class HostInfo:
    """What ``invoke(probe=True)`` found on a host before its command ran: ``child.host_info``.

    ``kernel`` is ``uname -srm`` (``"Linux 6.1.0-18-amd64 x86_64"``), ``cpu_model`` the CPU's
    name, ``cpu_count`` the online CPUs, ``memory_total`` bytes of RAM, ``load_average`` the
    1, 5 and 15 minute load, ``python`` what ``python3 --version`` printed (``"Python
    3.11.2"``). Whatever the host could not tell is ``None``."""

    kernel: str | None = None
    cpu_model: str | None = None
    cpu_count: int | None = None
    memory_total: int | None = None
    load_average: tuple[float, float, float] | None = None
    python: str | None = None

    @classmethod
    def from_lines(cls, lines: list[str]) -> HostInfo:
        """Parse the probe's ``key=value`` lines (``MARK`` taken off); unknown keys are
        ignored, bad values are ``None``."""
        values: dict[str, str] = {}
        for line in lines:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
        python = values.get("python") or None
        return cls(
            kernel=values.get("kernel") or None,
            cpu_model=values.get("cpu_model") or None,
            cpu_count=_int(values.get("cpu_count")),
            memory_total=_int(values.get("memory_total")),
            load_average=_load(values.get("load_average")),
            python=python if python and python.startswith("Python") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a results file's ``host_info``)."""
        row = attrs.asdict(self)
        if self.load_average is not None:
            row["load_average"] = list(self.load_average)
        return row
