"""The daemon image's files keep their promises: the Dockerfile installs with install.sh (what CI exercises), runs
eventq consume under tini as a non-root user with a health check, and the health check refuses bad input cleanly."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "deploy/Dockerfile").read_text()
HEALTHCHECK = REPO / "deploy/docker/healthcheck.py"


def test_dockerfile_installs_with_the_script_ci_runs() -> None:
    """Both stages run deploy/docker/install.sh (build, then install from the wheels), so check.sh proves them."""
    assert "sh deploy/docker/install.sh build /src /wheels" in DOCKERFILE
    assert "sh /usr/local/lib/eventq/install.sh install /wheels /opt/eventq" in DOCKERFILE
    assert DOCKERFILE.count("FROM python:${PYTHON_VERSION}-slim") == 2


def test_dockerfile_runs_the_daemon_as_pid_1_child_of_tini_as_non_root() -> None:
    """The entrypoint is exec-form tini -- eventq consume with --health-port, as UID 10001, with a HEALTHCHECK."""
    assert 'ENTRYPOINT ["tini", "--", "eventq", "consume"]' in DOCKERFILE
    assert 'CMD ["orders_projector.handlers:app", "--health-port", "8080"]' in DOCKERFILE
    assert "USER 10001:10001" in DOCKERFILE
    assert 'CMD ["python", "/usr/local/lib/eventq/healthcheck.py"]' in DOCKERFILE


def run_healthcheck(*args: str, port: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"EVENTQ_HEALTH_PORT": port} if port is not None else {}
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], env=env, capture_output=True, text=True,
                          timeout=30)


def test_healthcheck_refuses_a_bad_port_in_one_line() -> None:
    """EVENTQ_HEALTH_PORT that is not a port (text, 0, too large, hostile) exits 1 with one line naming it."""
    for bad in ("http", "0", "70000", "8080; rm -rf /", "-1"):
        done = run_healthcheck(port=bad)
        assert done.returncode == 1
        assert done.stderr.startswith("healthcheck: EVENTQ_HEALTH_PORT=") and done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr


def test_healthcheck_fails_when_nothing_answers() -> None:
    """A port where no daemon listens is unhealthy (exit 1, one line), not a crash."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        done = run_healthcheck(str(port))
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_dockerignore_lets_through_what_the_dockerfile_copies() -> None:
    """Every path the Dockerfile COPYs from the context is re-included by .dockerignore (which excludes the rest)."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    copied = [
        source for line in DOCKERFILE.splitlines() if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    ]
    assert copied
    for source in copied:
        assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is excluded by .dockerignore"
