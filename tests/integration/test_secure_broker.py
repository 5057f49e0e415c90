"""eventq against a broker that authenticates (SASL/SCRAM, client certificates), encrypts and authorises.

The broker is tests/securebroker.py's, started once for the module's session. The
happy paths use the library in-process and the CLI as a user would, with only
``EVENTQ_*`` variables; the failure table runs the real CLI and checks that each
security problem exits 1 with one ``Error:`` line naming its cause.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventq.config import KafkaSettings
from eventq.kafka import create_topics
from eventq.producers import Producer, ProducerSettings
from eventq.telemetry import tracing as tr
from eventq_dev.demo import SCHEMAS as DEMO_SCHEMAS
from tests.integration.consumer_kit import order, rows
from tests.securebroker import ADMIN_PASSWORD, LIMITED_PASSWORD, SecureBroker, secure_broker  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

EVENTQ = [sys.executable, "-m", "eventq.cli"]
APP = "tests.securebroker:app"


async def _run(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *EVENTQ, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"eventq {' '.join(args)} did not finish within {timeout:.0f} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _env(settings: KafkaSettings, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTQ_", "OTEL_"))}
    return {**base, **SecureBroker.env(settings), "EVENTQ_SCHEMAS": ",".join(DEMO_SCHEMAS), **extra}


def _spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _one(spans: list[dict[str, Any]], name: str, **attributes: Any) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name and all(s["attributes"].get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, f"{len(found)} spans named {name!r} with {attributes}: {[s['name'] for s in spans]}"
    return found[0]


@pytest.mark.parametrize("listener", ["sasl", "mtls"])
async def test_publish_consume_dead_letter_and_replay_over_a_secured_listener_keep_one_trace(
    secure_broker: SecureBroker, database: str, tmp_path: Path, listener: str  # noqa: F811
) -> None:
    """Over SASL_SSL/SCRAM-SHA-512 and over SSL with a client certificate, publish, publish_many,
    a daemon dead-lettering one event, `eventq dlq list` and a transactional `eventq dlq replay`
    all work from EVENTQ_* settings, and publish → handle → dead letter → replay → handle is one trace."""
    settings = secure_broker.sasl() if listener == "sasl" else secure_broker.mtls()
    topic = f"secure.{listener}.{uuid.uuid4().hex[:8]}"
    await create_topics(settings, [topic], partitions=2)
    async with Producer(ProducerSettings(kafka=settings, default_topic=topic, schemas=DEMO_SCHEMAS)) as producer:
        landed = await producer.publish(order(1))
        report = await producer.publish_many([order(n) for n in range(2, 6)])
    report.raise_for_failures()
    assert landed.topic == topic and len(report.published) == 4

    spans_file = tmp_path / "spans.jsonl"
    env = _env(settings, EVENTQ_DATABASE_URL=database, EVENTQ_TRACE_FILE=str(spans_file),
               EVENTQ_SESSION_TIMEOUT_S="6", OTEL_SERVICE_NAME="secure-test")
    declined = {"order_id": "declined", "customer_id": "c", "amount_cents": 5, "currency": "EUR"}
    code, out, err = await _run("publish", "-t", topic, "--type", "demo.order.created.v1", "-k", "customer-x",
                                "-d", json.dumps(declined), env=env)
    assert code == 0, err[-2000:]
    declined_id = out.split()[1]  # "published <id> to <topic> partition <p> offset <o>"
    group = f"secure-{listener}-{uuid.uuid4().hex[:6]}"
    consume = ("consume", APP, "--topic", topic, "--group", group, "--until-idle")
    code, _, err = await _run(*consume, env=env)
    assert code == 0, err[-3000:]
    assert sorted(r["outcome"] for r in await rows(database, group)) == ["dead_lettered"] + ["handled"] * 5

    code, out, err = await _run("dlq", "list", f"{topic}.dlt", "--json", env=env)
    assert code == 0, err[-2000:]
    [summary] = json.loads(out)
    assert summary["topic"] == f"{topic}.dlt" and summary["count"] == 1
    run = f"secure-{listener}"
    code, out, err = await _run("dlq", "replay", f"{topic}.dlt", "--yes", "--run", run, env=env)
    assert code == 0, err[-3000:]
    code, _, err = await _run(*consume, env={**env, "SECURE_APP_FIXED": "1"})
    assert code == 0, err[-3000:]
    outcomes = {r["event_id"]: r["outcome"] for r in await rows(database, group)}
    assert outcomes[declined_id] == "handled"

    spans = _spans(spans_file)
    send = _one(spans, f"send {topic}", **{tr.MESSAGE_ID: declined_id, tr.OPERATION_NAME: "send"})
    handles = [s for s in spans if s["name"] == "handle demo.order.created.v1"
               and s["attributes"].get(tr.MESSAGE_ID) == declined_id]
    failed = next(s for s in handles if s["attributes"][tr.OUTCOME] == tr.DEAD_LETTERED)
    again = next(s for s in handles if s["attributes"][tr.OUTCOME] == tr.HANDLED)
    dlt_send = _one(spans, f"send {topic}.dlt")
    replay_send = _one(spans, f"send {topic}", **{tr.OPERATION_NAME: "replay"})
    assert failed["parent_id"] == send["context"]["span_id"]
    assert dlt_send["parent_id"] == failed["context"]["span_id"]
    assert replay_send["parent_id"] == dlt_send["context"]["span_id"]
    assert again["parent_id"] == replay_send["context"]["span_id"]
    assert {s["context"]["trace_id"] for s in (send, failed, dlt_send, replay_send, again)} == {
        send["context"]["trace_id"]
    }


@dataclass(frozen=True)
class Case:
    """One security failure: which command, with which settings, must say what."""

    name: str
    command: tuple[str, ...]
    settings: Callable[[SecureBroker], KafkaSettings]
    says: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


_ORDER = json.dumps({"order_id": "o-1", "customer_id": "c", "amount_cents": 1, "currency": "EUR"})
PUBLISH = ("publish", "-t", "limited.a", "--type", "demo.order.created.v1", "-d", _ORDER)
CONSUME = ("consume", APP, "--topic", "limited.a", "--group", "limited-g", "--until-idle")


def _ssl(b: SecureBroker, listener: str, ca: Path | None = None, protocol: str = "SSL") -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=b.address(listener), security_protocol=protocol,
                         ssl_cafile=str(ca or b.pki.ca) if protocol != "PLAINTEXT" else None)


CASES = [
    Case("wrong password", PUBLISH, lambda b: b.sasl(password="not-the-password"),
         ("authentication failed", "user 'admin'", "EVENTQ_SASL_PASSWORD")),
    Case("mechanism the listener does not enable", CONSUME, lambda b: b.sasl(sasl_mechanism="SCRAM-SHA-256"),
         ("does not enable SASL mechanism SCRAM-SHA-256", "EVENTQ_SASL_MECHANISM")),
    Case("untrusted CA", ("dlq", "list"), lambda b: _ssl(b, "MTLS", ca=b.pki.other_ca),
         ("not signed by a CA in EVENTQ_SSL_CAFILE", "self-signed certificate in certificate chain")),
    Case("expired certificate", PUBLISH, lambda b: _ssl(b, "EXPIRED"),
         ("certificate has expired", "renewed")),
    Case("host name mismatch", ("dlq", "replay", "limited.a.dlt", "--yes"), lambda b: _ssl(b, "WRONGHOST"),
         ("not issued for that address", "not valid for '127.0.0.1'", "subjectAltName")),
    Case("TLS client against a plaintext port", CONSUME, lambda b: _ssl(b, "CONTROLLER"),
         ("TLS handshake", "does not speak TLS", "EVENTQ_SECURITY_PROTOCOL")),
    Case("plaintext client against a TLS port", ("dlq", "list"), lambda b: _ssl(b, "MTLS", protocol="PLAINTEXT"),
         ("answered with TLS", "EVENTQ_SECURITY_PROTOCOL=SSL or SASL_SSL")),
    Case("no client certificate where one is required", PUBLISH, lambda b: _ssl(b, "MTLS"),
         ("refused this client's TLS certificate", "EVENTQ_SSL_CERTFILE")),
    Case("no right to create the dead-letter topic",
         ("consume", APP, "--topic", "limited.c", "--group", "limited-c", "--until-idle"),
         lambda b: b.sasl("limited"), ("not allowed to Create Topic:limited.c.dlt", "EVENTQ_CREATE_TOPICS=false")),
    Case("no right to describe topic configs",
         ("consume", APP, "--topic", "bare.b", "--group", "limited-b", "--until-idle"),
         lambda b: b.sasl("limited"), ("not allowed to DescribeConfigs Topic:bare.b",),
         env=(("EVENTQ_CREATE_TOPICS", "false"),)),
    Case("no right to the consumer group", ("consume", APP, "--topic", "limited.a", "--group", "other", "--until-idle"),
         lambda b: b.sasl("limited"),
         ("not allowed to use consumer group 'other'", "Read and Describe on Group:other")),
    Case("no right to the replay's transactional id", ("dlq", "replay", "limited.a.dlt", "--yes", "--run", "denied"),
         lambda b: b.sasl("limited"),
         ("transactional id 'eventq-replay.denied'", "Write and Describe on TransactionalId:eventq-replay.denied")),
    Case("no right to the replay's consumer group", ("dlq", "replay", "limited.a.dlt", "--yes", "--run", "granted-1"),
         lambda b: b.sasl("limited"),
         ("consumer group 'eventq-replay.granted-1'", "Group:eventq-replay.granted-1", "--run")),
    Case("no right to write the topic", ("publish", "-t", "bare.b", "--type", "demo.order.created.v1", "-d", _ORDER),
         lambda b: b.sasl("limited"), ("User:limited is not allowed to Write Topic:bare.b",)),
    Case("no right even to describe the topic (it looks missing)",
         ("publish", "-t", "hidden.h", "--type", "demo.order.created.v1", "-d", _ORDER),
         lambda b: b.sasl("limited"), ("User:limited is not allowed to Write Topic:hidden.h",)),
]


async def test_each_security_failure_exits_1_with_one_error_line_naming_its_cause(
    secure_broker: SecureBroker, database: str  # noqa: F811
) -> None:
    """Wrong credentials, an unknown mechanism, untrusted/expired/wrong-host certificates, TLS meeting
    plaintext both ways, a missing client certificate and each missing ACL make the real CLI exit 1
    within seconds with one `Error:` line that names the cause and the fix, and no traceback."""

    # A few at a time: fifteen interpreters and TLS handshakes at once on two shared cores
    # can outlast a start-up bound that no failure should need.
    running = asyncio.Semaphore(4)

    async def attempt(case: Case) -> tuple[Case, int, str]:
        env = _env(case.settings(secure_broker), EVENTQ_DATABASE_URL=database, **dict(case.env))
        async with running:
            code, out, err = await _run(*case.command, env=env, timeout=60)
        return case, code, out + err

    results = await asyncio.gather(*(attempt(case) for case in CASES))
    problems = []
    for case, code, output in results:
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        if code != 1 or len(errors) != 1 or "Traceback" in output:
            problems.append(f"{case.name}: exit {code}, {len(errors)} Error lines:\n{output[-1500:]}")
        elif missing := [s for s in case.says if s not in errors[0]]:
            problems.append(f"{case.name}: {errors[0]!r} lacks {missing}")
        elif "start it (eventq dev up)" in errors[0]:
            problems.append(f"{case.name}: still blamed on an unreachable broker: {errors[0]!r}")
        elif leaked := [p for p in (ADMIN_PASSWORD, LIMITED_PASSWORD, "not-the-password") if p in output]:
            problems.append(f"{case.name}: a SASL password was printed ({leaked})")
    assert not problems, "\n\n".join(problems)
