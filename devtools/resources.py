"""What a benchmark's window cost each process: CPU seconds, resident memory, Postgres work.

CPU is read from /proc (through psutil) at the start and at the end of a window: user +
system time of every process of a kind, and for Postgres the postmaster, every child alive at
either moment and the children it reaped in between (its cutime/cstime), so backends that
come and go are counted. Divided by the runs completed in the window this is the CPU per run,
which, unlike wall-clock latency, hardly moves when other work shares the machine.

Postgres statements come from ``pg_stat_statements`` when the server preloads it (the
embedded server of ``make run`` and the soak do, see `EmbeddedPostgres(track_statements=…)`):
every execution is one client round trip with asyncpg (BEGIN and COMMIT count as their own),
except the Parse of a statement a connection sees for the first time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg
import psutil

# How a service's process is recognised: `python -m services.<name>` (its module path).
SERVICE_KINDS = ("control_plane", "worker", "vault", "gateway", "web")
# In printing order; "postgres" is the postmaster and all its children.
KIND_LABELS = {
    "control_plane": "control plane",
    "worker": "worker",
    "postgres": "Postgres",
    "vault": "vault",
    "gateway": "gateway",
    "web": "HTTP edge",
    "devmodel": "dev model",
    "client": "bench client",
}
SERVER_KINDS = ("control_plane", "worker", "postgres")


def service_kind(cmdline: Sequence[str]) -> str | None:
    """Return which service a command line runs, or None for anything else."""
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "-m":
            module = cmdline[i + 1]
            if module == "devtools.devmodel":
                return "devmodel"
            name = module.removeprefix("services.")
            if module.startswith("services.") and name in SERVICE_KINDS:
                return name
    return None


def _cpu(proc: psutil.Process, *, with_children: bool) -> float:
    times = proc.cpu_times()
    total = times.user + times.system
    if with_children:
        total += times.children_user + times.children_system
    return total


@dataclass
class Sample:
    """CPU seconds consumed so far and resident bytes now, per kind of process."""

    cpu: dict[str, float] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    # Postgres children by pid, so a backend alive at the start and gone at the end is not
    # counted twice (its time moved into the postmaster's children times).
    pg_children: dict[int, float] = field(default_factory=dict)


class Processes:
    """The processes of a stack or cluster, grouped by kind, found afresh at every sample.

    `members` lists the pids whose kind is told by their command line (the services, the
    dev model); `postmaster` is the Postgres server's pid; the calling process is "client".
    """

    def __init__(self, members: Iterable[int], postmaster: int | None) -> None:
        """Remember the pids; none is read yet."""
        self._members = list(members)
        self._postmaster = postmaster

    @classmethod
    def process_group(cls, group: int, postmaster: int | None) -> Processes:
        """Return every process of a process group (how `make run` starts its children)."""
        pids = []
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(OSError):
                if os.getpgid(proc.pid) == group:
                    pids.append(proc.pid)
        return cls(pids, postmaster)

    def add(self, pids: Iterable[int]) -> None:
        """Also watch these processes (replacements started during a window)."""
        self._members.extend(pid for pid in pids if pid not in self._members)

    def sample(self) -> Sample:
        """Read every process's CPU time and resident memory now."""
        sample = Sample()

        def note(kind: str, cpu: float, rss: int) -> None:
            sample.cpu[kind] = sample.cpu.get(kind, 0.0) + cpu
            sample.rss[kind] = sample.rss.get(kind, 0) + rss
            sample.count[kind] = sample.count.get(kind, 0) + 1

        for pid in self._members:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                kind = service_kind(proc.cmdline())
                if kind is not None:
                    note(kind, _cpu(proc, with_children=False), proc.memory_info().rss)
        if self._postmaster is not None:
            with contextlib.suppress(psutil.Error):
                master = psutil.Process(self._postmaster)
                note("postgres", _cpu(master, with_children=True), master.memory_info().rss)
                for child in master.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        sample.pg_children[child.pid] = _cpu(child, with_children=False)
        me = psutil.Process()
        note("client", _cpu(me, with_children=False), me.memory_info().rss)
        return sample


def cpu_used(start: Sample, end: Sample) -> dict[str, float]:
    """Return the CPU seconds each kind used between two samples."""
    used = {kind: end.cpu.get(kind, 0.0) - start.cpu.get(kind, 0.0) for kind in end.cpu}
    if "postgres" in used:
        # Children alive at the end count in full minus what they had at the start; those
        # gone by the end are in the postmaster's children times already.
        used["postgres"] += sum(
            cpu - start.pg_children.get(pid, 0.0) for pid, cpu in end.pg_children.items()
        )
        used["postgres"] -= sum(
            cpu for pid, cpu in start.pg_children.items() if pid not in end.pg_children
        )
    return used


def describe_cpu(used: Mapping[str, float], runs: int, *, counts: Mapping[str, int]) -> list[str]:
    """Format CPU milliseconds per run, per kind, and the server total (CP + worker + PG)."""
    if runs <= 0:
        return ["  CPU per run: no completed runs"]
    lines = []
    for kind, label in KIND_LABELS.items():
        if kind not in used:
            continue
        n = counts.get(kind, 1)
        name = f"{label} (x{n})" if n > 1 else label
        lines.append(
            f"    {name:<22} {used[kind] * 1000 / runs:7.2f} ms"
            f"   ({used[kind]:.2f} s over {runs} runs)"
        )
    server = sum(used.get(kind, 0.0) for kind in SERVER_KINDS)
    lines.append(f"    {'server (CP+worker+PG)':<22} {server * 1000 / runs:7.2f} ms")
    return ["  CPU per completed run:", *lines]


def describe_rss(sample: Sample, kinds: Sequence[str] = SERVER_KINDS) -> str:
    """Format the resident memory of the given kinds, in MB."""
    parts = [
        f"{KIND_LABELS[k]} {sample.rss[k] / 1e6:.0f} MB"
        + (f" (x{sample.count[k]})" if sample.count.get(k, 1) > 1 else "")
        for k in kinds
        if k in sample.rss
    ]
    return ", ".join(parts)


class StatementCounter:
    """Postgres statements executed by the services in a window, from pg_stat_statements.

    Statements of the superuser `postgres` (this counter's own, migrations) are left out.
    """

    def __init__(self, admin_dsn: str) -> None:
        """Remember where to connect; `start` connects."""
        self._dsn = admin_dsn
        self._conn: asyncpg.Connection | None = None
        self.unavailable: str | None = None

    async def start(self) -> None:
        """Connect, make sure the extension exists, and zero its counters."""
        try:
            self._conn = await asyncpg.connect(self._dsn)
            await self._conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await self._conn.execute("SELECT pg_stat_statements_reset()")
        except (OSError, asyncpg.PostgresError) as err:
            self.unavailable = str(err).splitlines()[0]
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    async def top(self, limit: int = 12) -> list[tuple[int, str]]:
        """Return (calls, query) of the most executed statements since `start`."""
        if self._conn is None:
            return []
        rows = await self._conn.fetch(
            "SELECT calls, query FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
            " WHERE r.rolname <> 'postgres' ORDER BY calls DESC LIMIT $1",
            limit,
        )
        return [(int(r["calls"]), str(r["query"])) for r in rows]

    async def total(self) -> int | None:
        """Return the statements executed since `start`, or None when not available."""
        if self._conn is None:
            return None
        value = await self._conn.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s"
            " JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname <> 'postgres'"
        )
        return int(value)

    async def close(self) -> None:
        """Disconnect."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def describe_statements(total: int | None, runs: int, unavailable: str | None) -> str:
    """Format the statements per run, or why they were not counted."""
    if total is None:
        return f"  Postgres statements: not counted ({unavailable or 'no admin connection'})"
    per_run = total / runs if runs else 0.0
    return (
        f"  {'Postgres statements per run':<44} {per_run:.2f}"
        f"  ({total} over {runs} runs; each one client round trip)"
    )


@dataclass(frozen=True)
class StackResources:
    """Where to read a `make run` stack's costs: its processes and its Postgres."""

    processes: Processes
    admin_dsn: str | None


def find_stack(endpoint: str) -> StackResources | None:
    """Return the processes of this clone's live stack serving `endpoint`, if there is one."""
    from devtools.embedded_pg import running_server
    from devtools.stack.console import StackError
    from devtools.stack.database import embedded_data_dir
    from devtools.stack.rundir import live_stacks

    stack = next((s for s in live_stacks() if s.endpoint == endpoint), None)
    if stack is None or stack.process_group is None:
        return None
    try:
        postmaster = running_server(embedded_data_dir())
    except StackError:
        postmaster = None
    processes = Processes.process_group(stack.process_group, postmaster.pid if postmaster else None)
    dsn = f"postgresql://postgres@127.0.0.1:{postmaster.port}/postgres" if postmaster else None
    return StackResources(processes, dsn)


class Window:
    """One measured window: samples at `start` and `stop`, statements in between."""

    def __init__(self, resources: StackResources | None) -> None:
        """Measure `resources`, or only the calling process when there are none."""
        self._processes = resources.processes if resources else Processes([], None)
        self._statements = (
            StatementCounter(resources.admin_dsn) if resources and resources.admin_dsn else None
        )
        self._start: Sample | None = None
        self.end: Sample | None = None
        self.used: dict[str, float] = {}
        self.statements: int | None = None
        self.top: list[tuple[int, str]] = []

    def use(self, processes: Processes, admin_dsn: str | None = None) -> None:
        """Measure these processes from now on (and count statements through `admin_dsn`)."""
        self._processes = processes
        if admin_dsn is not None:
            self._statements = StatementCounter(admin_dsn)

    async def start(self) -> None:
        """Zero the statement counters and take the first sample."""
        if self._statements is not None:
            await self._statements.start()
        self._start = self._processes.sample()

    async def stop(self) -> None:
        """Take the last sample and read the statements."""
        assert self._start is not None, "stop() before start()"
        self.end = self._processes.sample()
        self.used = cpu_used(self._start, self.end)
        if self._statements is not None:
            self.statements = await self._statements.total()
            self.top = await self._statements.top()
            await self._statements.close()

    def describe(self, runs: int, *, statements_detail: bool = False) -> list[str]:
        """Format CPU, memory and statements per completed run."""
        assert self.end is not None, "describe() before stop()"
        lines = describe_cpu(self.used, runs, counts=self.end.count)
        lines.append(f"  {'resident memory at the end':<44} {describe_rss(self.end)}")
        if self._statements is None:
            lines.append("  Postgres statements: not counted (not a stack of this clone)")
        else:
            lines.append(describe_statements(self.statements, runs, self._statements.unavailable))
            if statements_detail and runs:
                for calls, query in self.top:
                    text = " ".join(query.split())
                    lines.append(f"    {calls / runs:6.2f}/run  {text[:100]}")
        return lines
