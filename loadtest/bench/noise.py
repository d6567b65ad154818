"""How busy the machine was with *other* work while a scenario ran.

The bench shares two cores with whatever else runs on the machine (other people's test
suites, a browser). CPU-seconds per delivery are read per server process and hold up under
such noise; latencies do not. So every scenario records the CPU time the whole machine spent
(/proc/stat), minus what the bench and everything it started spent (getrusage of itself and
its waited-for children: servers, workers, py-spy), and the load average; BENCHMARKS.md
quotes them next to the latencies.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_s(stat_line: str) -> float:
    """Non-idle CPU seconds of all CPUs since boot, from the ``cpu`` line of /proc/stat.

    Fields: user nice system idle iowait irq softirq steal guest guest_nice; idle and iowait
    are not work, and guest time is already counted in user.
    """
    fields = [int(x) for x in stat_line.split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


def _busy_now() -> float:
    with open("/proc/stat", encoding="ascii") as fh:
        return machine_busy_s(fh.readline())


def _ours_now() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Noise:
    busy: float
    ours: float
    loadavg: float

    @classmethod
    def begin(cls) -> Noise:
        return cls(_busy_now(), _ours_now(), os.getloadavg()[0])

    def end(self, wall_s: float) -> dict[str, float]:
        """Call after the scenario stopped (and so waited for) everything it started."""
        busy = _busy_now() - self.busy
        ours = _ours_now() - self.ours
        other = max(0.0, busy - ours)
        return {
            "bench_cpu_s": round(ours, 1),
            "other_processes_cpu_s": round(other, 1),
            "other_cores_busy": round(other / wall_s, 2) if wall_s else 0.0,
            "loadavg_1m_start": round(self.loadavg, 2),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
        }
