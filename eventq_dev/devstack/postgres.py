"""A throw-away PostgreSQL cluster run from Debian's server binaries, on loopback only.

``initdb`` and ``postgres`` refuse to run as root; as root they run as the ``postgres``
system user through ``runuser``, which needs every parent of the cluster's folder to be
traversable by that user (:func:`cluster_home` picks a folder under /tmp otherwise).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from eventq.errors import DevStackError
from eventq_dev.devstack import (
    DATABASE,
    own_dsn,
    port_is_free,
    process_matches,
    read_pid,
    tail_lines,
)

__all__ = ["DATABASE", "PostgresCluster", "cluster_home", "find_pg_bindir"]

_SERVICE_USER = "postgres"
_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")
_INSTALL_HINT = "install them: apt-get install postgresql-15"


def find_pg_bindir() -> Path:
    """The folder with ``initdb``/``pg_ctl``/``postgres``/``psql``, else DevStackError.

    Tries ``pg_config --bindir``, then the newest ``/usr/lib/postgresql/*/bin``.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        done = subprocess.run(
            [pg_config, "--bindir"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip():
            candidates.append(Path(done.stdout.strip()))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=_version_key, reverse=True)]
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in _BINARIES):
            return bindir
    raise DevStackError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via pg_config or in "
        f"/usr/lib/postgresql/*/bin; {_INSTALL_HINT} (or set EVENTQ_DATABASE_URL to use an "
        "existing server)"
    )


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def cluster_home(stack_dir: Path) -> Path:
    """Where the dev stack keeps its cluster: ``<stack_dir>/postgres`` when usable.

    As root, that folder must be reachable by the ``postgres`` user; if a parent lacks
    the execute bit for others, a folder under /tmp named after a hash of ``stack_dir``
    is used instead (the same one every time for the same ``stack_dir``).
    """
    preferred = stack_dir / "postgres"
    if os.geteuid() != 0 or _traversable_by_others(stack_dir):
        return preferred
    digest = hashlib.sha256(str(stack_dir).encode()).hexdigest()[:10]
    return Path("/tmp") / f"eventq-pg-{digest}"


def _traversable_by_others(path: Path) -> bool:
    existing = path
    while not existing.exists():
        existing = existing.parent
    for folder in (existing, *existing.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
    return True


class PostgresCluster:
    """One PostgreSQL cluster in ``home`` (``data/``, ``postgres.log``, its unix socket).

    Trust authentication for user ``postgres`` on 127.0.0.1 only; the database
    :data:`DATABASE` exists once :meth:`start` returns. Data is kept across restarts.
    """

    def __init__(self, *, home: Path, port: int, bindir: Path | None = None) -> None:
        self.home = home.resolve()
        self.port = port
        self._bindir = bindir

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/eventq``."""
        return own_dsn(self.port)

    def pid(self) -> int | None:
        """The postmaster's pid if the cluster is running, else None."""
        pid = read_pid(self.data_dir / "postmaster.pid")
        if pid is not None and process_matches(pid, "postgres", str(self.data_dir)):
            return pid
        return None

    def is_running(self) -> bool:
        """True only if a live postmaster serves this cluster's data folder."""
        return self.pid() is not None

    def start(self, timeout: float = 60) -> None:
        """Start the cluster (creating it on first use) and create the database.

        Returns once it accepts connections; a no-op if it is already running. Raises
        :class:`DevStackError` if the port is taken by another process, the binaries
        are missing, or PostgreSQL fails to start (with the end of its log).
        """
        if self.is_running():
            return
        if not port_is_free(self.port):
            raise DevStackError(
                f"port {self.port} (PostgreSQL) is already in use by another process; "
                "stop that process or choose another port"
            )
        bindir = self._bindir or find_pg_bindir()
        self._prepare_home()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bindir)
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1"
        self._run(
            [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-o", options,
             "-l", str(self.log_file), "-w", "-t", str(int(timeout)), "start"],
            what="starting PostgreSQL", as_owner=True, timeout=timeout + 10,
        )  # fmt: skip
        self._create_database(bindir)

    def stop(self, timeout: float = 30) -> None:
        """Stop the cluster (``pg_ctl stop -m fast``); a no-op if it is not running."""
        if not self.is_running():
            return
        bindir = self._bindir or find_pg_bindir()
        self._run(
            [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
             "-t", str(int(timeout)), "stop"],
            what="stopping PostgreSQL", as_owner=True, timeout=timeout + 10,
        )  # fmt: skip

    def crash(self, timeout: float = 30) -> None:
        """Stop the cluster as a crash would (``pg_ctl stop -m immediate``: no checkpoint, so the
        next start runs crash recovery); a no-op if it is not running. For fault tests."""
        if not self.is_running():
            return
        bindir = self._bindir or find_pg_bindir()
        self._run(
            [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w",
             "-t", str(int(timeout)), "stop"],
            what="crashing PostgreSQL", as_owner=True, timeout=timeout + 10,
        )  # fmt: skip

    def _prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(_SERVICE_USER)
            except KeyError:
                raise DevStackError(
                    "PostgreSQL refuses to run as root and there is no 'postgres' user to run "
                    f"it as; {_INSTALL_HINT} (it creates that user)"
                ) from None
            os.chown(self.home, user.pw_uid, user.pw_gid)
            self.home.chmod(0o700)

    def _initdb(self, bindir: Path) -> None:
        # initdb into a side folder and rename, so an interrupted initdb is redone.
        partial = self.home / "data.partial"
        if partial.exists():
            shutil.rmtree(partial)
        self._run(
            [str(bindir / "initdb"), "-D", str(partial), "-A", "trust", "-U", "postgres",
             "-E", "UTF8", "--no-instructions"],
            what="initdb", as_owner=True, timeout=120,
        )  # fmt: skip
        partial.rename(self.data_dir)

    def _create_database(self, bindir: Path) -> None:
        psql = [str(bindir / "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port),
                "-U", "postgres", "-d", "postgres", "-tA", "-v", "ON_ERROR_STOP=1", "-c"]  # fmt: skip
        exists = self._run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
            what="checking the database",
            as_owner=False,
            timeout=30,
        )
        if exists.strip() != "1":
            self._run([*psql, f"CREATE DATABASE {DATABASE}"],
                      what="creating the database", as_owner=False, timeout=30)  # fmt: skip

    def _run(
        self, command: Sequence[str], *, what: str, as_owner: bool, timeout: float
    ) -> str:
        if as_owner and os.geteuid() == 0:
            command = [_runuser(), "-u", _SERVICE_USER, "--", *command]
        try:
            done = subprocess.run(
                command, cwd=self.home, capture_output=True, text=True, timeout=timeout,
                check=False, env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise DevStackError(
                f"{what} did not finish within {timeout:.0f} s; last lines of "
                f"{self.log_file}:\n{tail_lines(self.log_file)}"
            ) from None
        except OSError as exc:
            raise DevStackError(
                f"{what} failed: could not run {command[0]}: {exc}"
            ) from exc
        if done.returncode != 0:
            output = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
            raise DevStackError(
                f"{what} failed (exit {done.returncode}):\n{output}\n"
                f"last lines of {self.log_file}:\n{tail_lines(self.log_file)}"
            )
        return done.stdout


def _runuser() -> str:
    # /usr/sbin is often missing from a non-login root PATH.
    found = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    if found is None:
        raise DevStackError(
            "runuser not found; as root, PostgreSQL must run as the postgres user: "
            "apt-get install util-linux, or run eventq as a non-root user"
        )
    return found
