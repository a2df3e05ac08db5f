"""Interleaved wall-clock timing shared by the benchmarks (run as scripts: this imports as ``timing``).

Why interleaved
    The machines are shared. A reference timed in one block and the code under test in another
    see different load, and the ratio of the two medians then measures the load as much as the
    code. ``interleave`` runs them in rounds instead (A B A B ...), so that the two times of one
    round see nearly the same conditions, and reports the median of the per-round ratios with
    their spread.

Why a load flag as well
    Interleaving does not make a ratio measured under load equal to the quiet-machine ratio:
    code made of many small multi-threaded ops (torch-cka, a training loop) stalls far more than
    a few large matrix products when another process holds a core, because every op ends in a
    barrier that waits for its slowest thread. A run on a busy machine is therefore flagged
    NOT CONCLUSIVE, whatever its ratio.

    "Load" here is the larger of two figures, in cores:
    - the 1-minute load average just before the first (warmup) run: work that was running as the
      benchmark started, or had just stopped (the average takes a minute or two to decay, so wait
      that long between runs);
    - the CPU time that other processes (and the hypervisor, as steal time) took while the rounds
      ran, from /proc/stat minus this process and its children, over the wall time.
    The load average after the rounds is reported too, but it includes the benchmark's own
    threads, so it cannot tell a busy machine from a busy benchmark.

    QUIET_LOAD_PER_CORE = 0.5: a run is conclusive when that load is at most half the cores (1.0 on
    a 2-core machine). Above it, some core ran another process for more than half the time
    while every core was also wanted by the benchmark's own threads.

    What neither figure sees: contention from outside this machine's view, such as other virtual
    machines on the same physical cores or memory bus. It slows everything without showing as
    load or steal (here bench_cka's forward passes have run 1.4x slower than in a quiet run while
    other processes and steal took under 0.05 cores). Compare the reference's own time, which the
    benchmarks print, with a known quiet run before trusting a "conclusive".
"""
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

QUIET_LOAD_PER_CORE = 0.5


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device="cpu"):
    """Wall-clock seconds of ``fn()``, with the device's queue drained before and after."""
    synchronize(device)
    began = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - began


# ------------------------------------------------------------------------------------------------
# CPU accounting (Linux /proc; elsewhere only the load average is available)
# ------------------------------------------------------------------------------------------------

def _busy_seconds():
    """CPU seconds all processes spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds():
    """CPU seconds of this process, its live descendants (DataLoader workers) and reaped children."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                # The command name is in parentheses and may hold spaces: split after it.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parent[int(pid)] = int(fields[1])
        cpu[int(pid)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    ours = {os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, ppid in parent.items() if ppid in ours} - ours
        ours |= children
        grew = bool(children)
    usage = os.times()
    return sum(cpu.get(pid, 0.0) for pid in ours) + usage.children_user + usage.children_system


# ------------------------------------------------------------------------------------------------
# Interleaved rounds
# ------------------------------------------------------------------------------------------------

@dataclass
class Interleaved:
    """Times of several runs measured in interleaved rounds, and the load they were measured under."""

    times: dict[str, list[float]]
    results: dict[str, object]  # each run's last return value
    load_before: float
    load_after: float
    others: float | None  # cores used by other processes during the rounds; None without /proc
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def rounds(self):
        return len(next(iter(self.times.values())))

    def median(self, name):
        return statistics.median(self.times[name])

    def ratios(self, num, den):
        """time(num) / time(den) within each round."""
        return [a / b for a, b in zip(self.times[num], self.times[den])]

    def ratio(self, num, den):
        """Median of the per-round ratios time(num) / time(den)."""
        return statistics.median(self.ratios(num, den))

    def spread(self, num, den):
        r = self.ratios(num, den)
        return f"{min(r):.2f}..{max(r):.2f}"

    @property
    def load(self):
        return max(self.load_before, self.others if self.others is not None else 0.0)

    @property
    def limit(self):
        return QUIET_LOAD_PER_CORE * self.cores

    @property
    def conclusive(self):
        return self.load <= self.limit

    def ratio_line(self, num, den, label, unit="x", digits=2):
        return (f"{label} {self.ratio(num, den):7.{digits}f}{unit}   (median of {self.rounds} "
                f"interleaved pairs; per pair {self.spread(num, den)})")

    def load_lines(self):
        others = ("not measured (no /proc/stat)" if self.others is None
                  else f"{self.others:.2f} cores")
        verdict = (f"conclusive: quiet machine (load {self.load:.1f} on {self.cores} cores, "
                   f"limit {self.limit:.1f})" if self.conclusive else
                   f"NOT CONCLUSIVE: measured under load (load {self.load:.1f} on {self.cores} cores, "
                   f"limit {self.limit:.1f}); rerun on a quiet machine")
        return [f"load: 1-min average {self.load_before:.2f} before, {self.load_after:.2f} after "
                f"(after includes this benchmark's own threads); other processes and steal during "
                f"the rounds: {others}",
                verdict]


def interleave(runs: dict[str, Callable[[], object]], rounds: int, warmup=None,
               device="cpu") -> Interleaved:
    """Time ``runs`` (name -> zero-argument function) in ``rounds`` rounds, each calling every
    run once in the dict's order (A B A B ...).

    ``warmup``: names of the runs to call once, untimed, before the rounds (default: all), so
    that first-call costs (oneDNN primitive setup, allocator growth, worker start-up) are not
    timed. The load average is read before the warmup, so that it does not count as load.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    load_before = os.getloadavg()[0]
    results = {}
    for name in runs if warmup is None else warmup:
        results[name] = runs[name]()
    busy, own, began = _busy_seconds(), None, time.perf_counter()
    if busy is not None:
        own = _own_seconds()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            synchronize(device)
            start = time.perf_counter()
            results[name] = fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    wall = time.perf_counter() - began
    others = None
    if busy is not None:
        others = max(0.0, (_busy_seconds() - busy) - (_own_seconds() - own)) / wall
    return Interleaved(times, results, load_before, os.getloadavg()[0], others)
