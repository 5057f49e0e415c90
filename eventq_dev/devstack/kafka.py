"""A real Apache Kafka broker (KRaft) run from jars fetched from Maven Central.

A single node by default (the dev stack); ``node_id``/``voters``/``cluster_id`` let several
brokers form one cluster (the fault-injection suite's three nodes on loopback).

Why jars instead of Docker or the release tarball: docs/adr/0001-kafka-from-maven-central.md.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from string import Template

from eventq.errors import DevStackError
from eventq_dev.devstack import (
    StackSettings,
    port_accepts,
    port_is_free,
    process_matches,
    read_pid,
    tail_lines,
)

__all__ = [
    "KAFKA_VERSION",
    "KafkaBroker",
    "default_kafka_lib",
    "ensure_kafka_jars",
    "kafka_jars_installed",
    "random_cluster_id",
    "require_java",
    "run_kafka_tool",
]

KAFKA_VERSION = "4.4.0"
"""The broker version the dev stack runs; the single pin (the POM takes it via -D)."""

_MIN_JAVA = 17
_JAVA_HINT = "install OpenJDK 17+: apt-get install openjdk-17-jre-headless"
_SECOND_BINDING = re.compile(r"logback|slf4j-log4j12|slf4j-simple|slf4j-reload4j")
_MAIN_CLASS = "kafka.Kafka"
# Written into a fetched lib folder: the digest of the POM (and version) it was fetched with.
_STAMP = ".eventq-pom.sha256"


def _pom_digest() -> str:
    pom = resources.files("eventq_dev.devstack").joinpath("pom.xml").read_bytes()
    return hashlib.sha256(pom + KAFKA_VERSION.encode()).hexdigest()


def _is_current(lib: Path) -> bool:
    """True if ``lib`` was fetched with today's POM and holds the broker and the tools."""
    stamp = lib / _STAMP
    return (
        stamp.is_file()
        and stamp.read_text().strip() == _pom_digest()
        and any(lib.glob("kafka_2.13-*.jar"))
        and any(lib.glob("kafka-tools-[0-9]*.jar"))
    )


def _is_usable(lib: Path) -> bool:
    # A folder fetched with an older POM still runs the broker; without mvn to refresh it,
    # it is used as is rather than refused (only the Kafka tools may then be missing).
    return lib.is_dir() and (_is_current(lib) or shutil.which("mvn") is None)


def default_kafka_lib(stack_dir: Path) -> Path:
    """Where :func:`ensure_kafka_jars` installs the jars for ``stack_dir``."""
    return stack_dir / f"kafka-{KAFKA_VERSION}" / "lib"


def kafka_jars_installed(settings: StackSettings) -> bool:
    """True if :func:`ensure_kafka_jars` would return without running Maven."""
    if settings.kafka_lib is not None:
        return any(settings.kafka_lib.glob("kafka_2.13-*.jar"))
    return _is_usable(default_kafka_lib(settings.dir))


def ensure_kafka_jars(settings: StackSettings, *, timeout: float = 600) -> Path:
    """Return a folder holding the broker's jars, fetching them with Maven only once.

    ``settings.kafka_lib`` is used as is when set. Otherwise the jars go to
    ``<dir>/kafka-<KAFKA_VERSION>/lib``: Maven copies them into a temporary folder next
    to it, which is renamed into place only when complete, so an interrupted fetch is
    simply retried and a present folder is always whole. The folder is fetched again
    (and swapped in whole) when it was fetched with another ``pom.xml`` — a stamp file in
    it holds the POM's digest — or lacks the broker or the tools jar; without ``mvn`` on
    PATH an outdated folder is used as is. Concurrent callers are serialised by a lock
    file. Raises :class:`DevStackError` if ``mvn`` is missing or
    fails, or if the folder holds a second slf4j binding.
    """
    if settings.kafka_lib is not None:
        _check_lib(settings.kafka_lib, source="EVENTQ_KAFKA_LIB")
        return settings.kafka_lib
    lib = default_kafka_lib(settings.dir)
    if _is_usable(lib):
        _check_lib(lib, source="the cached jars")
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with open(lib.parent / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_usable(lib):  # another process may have finished while we waited
            _fetch_jars(lib, timeout)
    _check_lib(lib, source="the fetched jars")
    return lib


def _fetch_jars(lib: Path, timeout: float) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevStackError(
            f"mvn not found on PATH; it is needed once to fetch the Kafka {KAFKA_VERSION} jars "
            "from Maven Central: apt-get install maven (or set EVENTQ_KAFKA_LIB to a folder "
            "of Kafka jars)"
        )
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=lib.parent))
    try:
        pom = work / "pom.xml"
        pom.write_bytes(
            resources.files("eventq_dev.devstack").joinpath("pom.xml").read_bytes()
        )
        command = [
            mvn, "-q", "-B", "-f", str(pom), f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={work / 'lib'}",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command,
                cwd=work,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DevStackError(
                f"mvn did not finish fetching the Kafka jars within {timeout:.0f} s"
            ) from None
        if done.returncode != 0 or not any((work / "lib").glob("kafka_2.13-*.jar")):
            output = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise DevStackError(
                f"mvn failed to fetch the Kafka {KAFKA_VERSION} jars (exit {done.returncode}); "
                f"last lines of its output:\n{output}"
            )
        (work / "lib" / _STAMP).write_text(_pom_digest() + "\n")
        if lib.is_dir():
            # Swapped, not merged: a changed POM may drop or re-version jars. A broker still
            # running from the old folder keeps its jars open (they are unlinked, not gone).
            os.rename(lib, work / "old")
        os.rename(work / "lib", lib)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_lib(lib: Path, *, source: str) -> None:
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise DevStackError(f"{source} in {lib} hold no kafka_2.13-*.jar")
    extra = sorted(p.name for p in lib.glob("*.jar") if _SECOND_BINDING.search(p.name))
    if extra:
        raise DevStackError(
            f"{source} in {lib} include a second slf4j binding ({', '.join(extra)}); the broker "
            "uses log4j-slf4j-impl: remove those jars (or delete the folder to fetch it again)"
        )


def run_kafka_tool(
    lib: Path, main_class: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run one of Kafka's command-line tools (what ``bin/kafka-*.sh`` run) from ``lib``.

    ``main_class`` is the tool's class, e.g.
    ``org.apache.kafka.tools.consumer.group.ConsumerGroupCommand``. Returns the finished
    process with its output as text; the exit code is not checked (several tools print
    ``Error: ...`` and still exit 0). Raises :class:`DevStackError` if Java 17+ is missing
    or the tool does not finish within ``timeout`` seconds.
    """
    java = require_java()
    command = [java, "-Xmx256m", "-cp", f"{lib.resolve()}/*", main_class, *args]
    try:
        return subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DevStackError(
            f"the Kafka tool {main_class} did not finish within {timeout:.0f} s"
        ) from None


def require_java(environ: Mapping[str, str] | None = None) -> str:
    """Return the path of a ``java`` of version 17 or newer, else raise DevStackError.

    ``JAVA_HOME/bin/java`` wins when ``JAVA_HOME`` is set, as in Kafka's own scripts;
    otherwise ``java`` is looked up on ``PATH``.
    """
    env = os.environ if environ is None else environ
    java_home = env.get("JAVA_HOME")
    java: str | None
    if java_home:
        java = str(Path(java_home) / "bin" / "java")
        if not os.access(java, os.X_OK):
            raise DevStackError(f"JAVA_HOME={java_home} has no bin/java; fix or unset it, or "
                                + _JAVA_HINT)  # fmt: skip
    else:
        java = shutil.which("java", path=env.get("PATH", os.defpath))
    if java is None:
        raise DevStackError(f"java not found on PATH; Kafka {KAFKA_VERSION} needs Java 17+: "
                            + _JAVA_HINT)  # fmt: skip
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DevStackError(
            f"could not run {java} -version ({exc}); {_JAVA_HINT}"
        ) from exc
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if found is None:
        raise DevStackError(f"could not read the version of {java}; {_JAVA_HINT}")
    # Java 8 and older report "1.8.0_292".
    major = int(found[1]) if found[1] != "1" else int(found[2] or 0)
    if major < _MIN_JAVA:
        raise DevStackError(
            f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs Java 17+: {_JAVA_HINT}"
        )
    return java


class KafkaBroker:
    """One KRaft node (broker and controller) listening on 127.0.0.1 only.

    Everything lives under ``home``: ``server.properties``, ``data/`` (the log dir),
    ``logs/server.log``, ``logs/console.log`` and ``broker.pid``. Storage is formatted on
    the first start only, so a stopped broker restarted with the same home keeps its
    topics and offsets. Auto-creation of topics is off.

    By default the node is a cluster of its own (node 1, the only voter). For a cluster of
    several nodes give each its ``node_id``, the same ``voters`` (``controller.quorum.voters``,
    e.g. ``1@127.0.0.1:9093,2@127.0.0.1:9095,...``) and the same ``cluster_id`` (nodes
    formatted with different ids refuse to join each other). ``overrides`` are written
    after the template's properties; Java's ``Properties.load`` keeps the last occurrence
    of a key, so they win (a secured broker replaces ``listeners`` and friends this way;
    ``port`` is then the listener whose opening means "ready", usually the inter-broker one).
    ``scram_users`` are SCRAM credentials ``(mechanism, name, password)`` written into the
    storage when it is formatted (``--add-scram``), so a SASL/SCRAM listener has users before
    the broker serves its first request.
    """

    def __init__(
        self,
        *,
        home: Path,
        port: int,
        controller_port: int,
        lib: Path,
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
        overrides: Mapping[str, str] | None = None,
        scram_users: Iterable[tuple[str, str, str]] = (),
    ) -> None:
        self.home = home.resolve()
        self.port = port
        self.controller_port = controller_port
        self.lib = lib.resolve()
        self.node_id = node_id
        self.voters = voters or f"{node_id}@127.0.0.1:{controller_port}"
        self.cluster_id = cluster_id
        self.overrides = dict(overrides or {})
        self.scram_users = list(scram_users)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        """``server.log``, the broker's own log."""
        return self.home / "logs" / "server.log"

    @property
    def _properties(self) -> Path:
        return self.home / "server.properties"

    @property
    def _pid_file(self) -> Path:
        return self.home / "broker.pid"

    def pid(self) -> int | None:
        """The broker's pid if it is running, else None."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        pid = read_pid(self._pid_file)
        if pid is not None and process_matches(pid, _MAIN_CLASS, str(self._properties)):
            return pid
        return None

    def is_running(self) -> bool:
        """True only if a live ``kafka.Kafka`` process runs with this home's config.

        Not fooled by a stale pid file whose pid was reused, nor by a killed child
        that has not been reaped yet (a zombie).
        """
        return self.pid() is not None

    def start(self, timeout: float = 60) -> None:
        """Start the broker and return once its port accepts connections.

        A no-op if it is already running. Raises :class:`DevStackError` if either port is
        taken by another process, Java 17+ is missing, or the broker exits or is not ready
        within ``timeout`` seconds (the message carries the last 20 lines of server.log;
        a broker that is not ready in time is killed).
        """
        if self.is_running():
            return
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the broker process without waiting for it to be ready.

        Writes the config and formats storage on the first start. A no-op if it is already
        running. The nodes of a cluster are all launched before any is waited for: a broker
        is ready only once a majority of the controller quorum runs. Raises
        :class:`DevStackError` if either port is taken, Java 17+ is missing or formatting fails.
        """
        if self.is_running():
            return
        for port, what in ((self.port, "broker"), (self.controller_port, "controller")):
            if not port_is_free(port):
                raise DevStackError(
                    f"port {port} (Kafka {what}) is already in use by another process; "
                    "stop that process or choose another port"
                )
        java = require_java()
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format(java)
        self._launch(java)

    def _write_config(self) -> None:
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        package = resources.files("eventq_dev.devstack")
        template = Template(package.joinpath("server.properties").read_text())
        text = template.substitute(
            node_id=self.node_id,
            voters=self.voters,
            broker_port=self.port,
            controller_port=self.controller_port,
            log_dirs=self.data_dir,
        )
        if self.overrides:
            text += "\n# Overrides: the last occurrence of a key wins.\n" + "".join(
                f"{key}={value}\n" for key, value in self.overrides.items()
            )
        self._properties.write_text(text)
        (self.home / "log4j2.yaml").write_text(
            package.joinpath("log4j2.yaml").read_text()
        )

    def _format(self, java: str) -> None:
        cluster_id = self.cluster_id or random_cluster_id()
        command = [java, "-cp", f"{self.lib}/*", "kafka.tools.StorageTool", "format",
                   "-t", cluster_id, "-c", str(self._properties)]  # fmt: skip
        for mechanism, name, password in self.scram_users:
            command += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            output = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise DevStackError(
                f"formatting Kafka storage in {self.data_dir} failed:\n{output}"
            )

    def _launch(self, java: str) -> None:
        command = [
            java, "-Xms128m", "-Xmx512m", "-XX:+UseG1GC",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
            "-cp", f"{self.lib}/*", _MAIN_CLASS, str(self._properties),
        ]  # fmt: skip
        with open(self.home / "logs" / "console.log", "wb") as console:
            # A session of its own: Ctrl-C in the terminal that ran `eventq dev up` must
            # not reach the broker.
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
            )
        self._pid_file.write_text(f"{self._proc.pid}\n")

    def wait_ready(self, timeout: float = 60) -> None:
        """Return once the broker's port accepts connections (it is then unfenced and serving).

        Raises :class:`DevStackError` if the broker is not running or exits, or is not
        ready within ``timeout`` seconds (then it is killed); the message carries the last
        20 lines of server.log.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None:
                code = self._proc.poll()
                if code is not None:
                    self._pid_file.unlink(missing_ok=True)
                    raise DevStackError(
                        f"Kafka broker exited with code {code} during start-up; "
                        f"{self._failure_context()}"
                    )
            elif not self.is_running():  # not our child: only /proc tells whether it died
                raise DevStackError(
                    f"Kafka broker is not running; {self._failure_context()}"
                )
            # The broker opens its listening socket only once it can serve requests.
            if port_accepts(self.port):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise DevStackError(
                    f"Kafka broker did not accept connections on port {self.port} within "
                    f"{timeout:.0f} s; {self._failure_context()}"
                )
            time.sleep(0.1)

    def _failure_context(self) -> str:
        text = f"last lines of {self.log_file}:\n{tail_lines(self.log_file, 20)}"
        console = self.home / "logs" / "console.log"
        if console.exists() and console.stat().st_size:
            text += f"\nlast lines of {console}:\n{tail_lines(console, 20)}"
        return text

    def stop(self, timeout: float = 30) -> None:
        """Shut the broker down cleanly (SIGTERM), or SIGKILL it after ``timeout`` seconds.

        Returns once the process is gone. A no-op if it is not running.
        """
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            if not self._wait_gone(pid, timeout):
                os.kill(pid, signal.SIGKILL)
                self._wait_gone(pid, 10)
        self._pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; returns once the process is gone.

        The pid file stays behind, as after a real crash.
        """
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)  # also reaps our own child
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while process_matches(pid, _MAIN_CLASS):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


def random_cluster_id() -> str:
    """A new KRaft cluster id, as ``kafka-storage.sh random-uuid`` prints it (every node of a
    cluster is formatted with the same one)."""
    # Kafka's Uuid.toString: base64url, no padding, without a JVM start. Kafka avoids ids
    # starting with "-" for the CLI's sake.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text
