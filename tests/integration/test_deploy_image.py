"""The daemon image's install steps work: deploy/docker/check.sh runs the Dockerfile's install.sh into a fresh venv
(wheels only) on the Python the image uses, then the image's command against the real broker and database."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eventq.config import KafkaSettings

REPO = Path(__file__).resolve().parents[2]


def image_python() -> str:
    """The Dockerfile's default PYTHON_VERSION (3.12) where pyenv or PATH has it, else this interpreter."""
    assert "ARG PYTHON_VERSION=3.12\n" in (REPO / "deploy/Dockerfile").read_text()
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12.*/bin/python3.12")), reverse=True)
    return found[0] if found else shutil.which("python3.12") or sys.executable


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.postgres
def test_image_install_steps_run_a_daemon(kafka_settings: KafkaSettings, database: str) -> None:
    """install.sh builds and installs from wheels only; eventq consume --help works; the daemon passes the image's
    HEALTHCHECK and /readyz, handles an event, and exits 0 on SIGTERM."""
    env = {
        **os.environ, "EVENTQ_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers, "EVENTQ_DATABASE_URL": database,
        "PYTHON": image_python(),
    }
    done = subprocess.run(
        ["bash", str(REPO / "deploy/docker/check.sh")], env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "check: ok" in done.stdout
    assert "check: SIGTERM stopped the daemon cleanly (exit 0)" in done.stdout
