"""A secured Kafka broker for the suite: TLS from a CA made at test time, SCRAM users, ACLs.

One node, started once per session (``secure_broker`` fixture), with these listeners on
free loopback ports:

=========  ==========  ===============================================================
name       protocol    what it is for
=========  ==========  ===============================================================
INTERNAL   SSL         inter-broker (client certificate required; principal CN=broker)
SECURE     SASL_SSL    SCRAM-SHA-512 only; users ``admin`` (super user) and ``limited``
MTLS       SSL         client certificate required; ``CN=client`` has ACLs for everything
EXPIRED    SSL         presents a certificate that expired in 2020 (for failure tests)
WRONGHOST  SSL         presents a certificate for ``kafka.example.invalid`` only
CONTROLLER PLAINTEXT   the KRaft controller (also "a plaintext port" for failure tests)
=========  ==========  ===============================================================

``limited`` may read, write and describe the topics ``limited.*`` (and describe their
configs), read and describe ``bare.b*`` (not write them, nor describe their configs), use the
consumer groups ``limited-*`` and the transactional ids ``eventq-replay.granted-*``;
it may create nothing. Why PEM via openssl and these listeners:
docs/adr/0014-secured-broker-in-the-suite.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventq.config import KafkaSettings
from eventq.consumers import App, Context
from eventq.errors import Reject
from eventq.kafka import create_topics
from eventq.schemas import Event
from eventq_dev.devstack.kafka import KafkaBroker, run_kafka_tool

ADMIN_PASSWORD = "admin-secret"
LIMITED_PASSWORD = "limited-secret"
# Topics the fixture creates (as admin) for the limited principal's tests.
LIMITED_TOPICS = ("limited.a", "limited.a.dlt", "limited.c", "bare.b", "bare.b.dlt")

_CA_CONFIG = """\
[ca]
default_ca = ca_default
[ca_default]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[any]
commonName = supplied
"""


def _openssl(cwd: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


@dataclass(frozen=True)
class Pki:
    """PEM files made by :func:`make_pki` (keys unencrypted, PKCS#8)."""

    dir: Path
    ca: Path  # the CA certificate clients trust
    other_ca: Path  # a CA that signed nothing the broker presents ("untrusted CA")
    broker: Path  # key + chain for SAN localhost, 127.0.0.1 (CN=broker)
    expired: Path  # key + chain, valid 2020-01-01 to 2020-01-02 only
    wrong_host: Path  # key + chain for SAN kafka.example.invalid only
    client_cert: Path  # CN=client
    client_key: Path


def make_pki(directory: Path) -> Pki:
    """A CA, three server certificates (good, expired, wrong host) and a client certificate."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other-ca"):
        _openssl(d, "req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "3",
                 "-subj", f"/CN=eventq test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (d / "ca.cnf").write_text(_CA_CONFIG)
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")

    def issue(name: str, subject: str, san: str | None, usage: str, dates: tuple[str, str] | None = None) -> Path:
        extensions = [f"extendedKeyUsage={usage}"] + ([f"subjectAltName={san}"] if san else [])
        addext = [arg for ext in extensions for arg in ("-addext", ext)]
        _openssl(d, "req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, *addext)
        window = ["-startdate", dates[0], "-enddate", dates[1]] if dates else ["-days", "3"]
        _openssl(d, "ca", "-batch", "-notext", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
                 "-in", f"{name}.csr", "-out", f"{name}.crt", *window)
        bundle = d / f"{name}.bundle.pem"  # Kafka's PEM keystore: the key, then the chain
        bundle.write_text((d / f"{name}.key").read_text() + (d / f"{name}.crt").read_text()
                          + (d / "ca.pem").read_text())
        return bundle

    both = "serverAuth,clientAuth"
    broker = issue("broker", "/CN=broker", "DNS:localhost,IP:127.0.0.1", both)
    expired = issue("expired", "/CN=expired", "DNS:localhost,IP:127.0.0.1", both,
                    ("20200101000000Z", "20200102000000Z"))
    wrong_host = issue("wronghost", "/CN=wronghost", "DNS:kafka.example.invalid", both)
    issue("client", "/CN=client", None, "clientAuth")
    return Pki(dir=d, ca=d / "ca.pem", other_ca=d / "other-ca.pem", broker=broker, expired=expired,
               wrong_host=wrong_host, client_cert=d / "client.crt", client_key=d / "client.key")


@dataclass
class SecureBroker:
    """The running secured broker: its ports, files and ready-made client settings."""

    broker: KafkaBroker
    pki: Pki
    ports: dict[str, int]  # listener name -> port

    def address(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"

    def sasl(self, user: str = "admin", password: str | None = None, **overrides: str) -> KafkaSettings:
        """Settings for the SASL_SSL (SCRAM-SHA-512) listener."""
        default = ADMIN_PASSWORD if user == "admin" else LIMITED_PASSWORD
        fields = dict(bootstrap_servers=self.address("SECURE"), client_id="eventq-secure-tests",
                      security_protocol="SASL_SSL", ssl_cafile=str(self.pki.ca), sasl_mechanism="SCRAM-SHA-512",
                      sasl_username=user, sasl_password=default if password is None else password)
        return KafkaSettings(**{**fields, **overrides})

    def mtls(self) -> KafkaSettings:
        """Settings for the SSL listener with the client certificate (principal CN=client)."""
        return KafkaSettings(bootstrap_servers=self.address("MTLS"), client_id="eventq-secure-tests",
                             security_protocol="SSL", ssl_cafile=str(self.pki.ca),
                             ssl_certfile=str(self.pki.client_cert), ssl_keyfile=str(self.pki.client_key))

    @staticmethod
    def env(settings: KafkaSettings) -> dict[str, str]:
        """The EVENTQ_* variables that express ``settings`` (for CLI subprocesses)."""
        names = {
            "EVENTQ_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "EVENTQ_SECURITY_PROTOCOL": settings.security_protocol,
            "EVENTQ_SSL_CAFILE": settings.ssl_cafile,
            "EVENTQ_SSL_CERTFILE": settings.ssl_certfile,
            "EVENTQ_SSL_KEYFILE": settings.ssl_keyfile,
            "EVENTQ_SASL_MECHANISM": settings.sasl_mechanism,
            "EVENTQ_SASL_USERNAME": settings.sasl_username,
            "EVENTQ_SASL_PASSWORD": settings.sasl_password,
        }
        return {name: value for name, value in names.items() if value is not None}

    def acl(self, *args: str) -> None:
        """Run Kafka's AclCommand as the broker's own principal (a super user)."""
        config = self.pki.dir / "admin-client.properties"
        done = run_kafka_tool(self.broker.lib, "org.apache.kafka.tools.AclCommand",
                              "--bootstrap-server", self.address("INTERNAL"), "--command-config", str(config), *args)
        if done.returncode != 0 or "Error" in done.stdout + done.stderr:
            raise RuntimeError(f"AclCommand {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def broker_overrides(pki: Pki, ports: dict[str, int]) -> dict[str, str]:
    """The server.properties of the secured broker, over the dev stack's template."""
    protocols = {"INTERNAL": "SSL", "SECURE": "SASL_SSL", "MTLS": "SSL", "EXPIRED": "SSL", "WRONGHOST": "SSL",
                 "CONTROLLER": "PLAINTEXT"}
    clients = [name for name in protocols if name != "CONTROLLER"]
    overrides = {
        "listeners": ",".join(f"{name}://127.0.0.1:{ports[name]}" for name in protocols),
        "advertised.listeners": ",".join(f"{name}://127.0.0.1:{ports[name]}" for name in clients),
        "listener.security.protocol.map": ",".join(f"{name}:{proto}" for name, proto in protocols.items()),
        "inter.broker.listener.name": "INTERNAL",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(pki.broker),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(pki.ca),
        "listener.name.internal.ssl.client.auth": "required",
        "listener.name.mtls.ssl.client.auth": "required",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.secure.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.expired.ssl.keystore.type": "PEM",
        "listener.name.expired.ssl.keystore.location": str(pki.expired),
        "listener.name.wronghost.ssl.keystore.type": "PEM",
        "listener.name.wronghost.ssl.keystore.location": str(pki.wrong_host),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # The node's broker half registers with its controller half over the PLAINTEXT
        # controller listener, where it is ANONYMOUS; that port serves controller APIs only.
        "super.users": "User:admin;User:CN=broker;User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
    }
    return overrides


def start_secure_broker(home: Path, lib: Path, ports: dict[str, int]) -> SecureBroker:
    """Make the PKI, format with SCRAM users, start the broker, create topics and ACLs."""
    pki = make_pki(home / "pki")
    (pki.dir / "admin-client.properties").write_text(
        "security.protocol=SSL\n"
        f"ssl.truststore.type=PEM\nssl.truststore.location={pki.ca}\n"
        f"ssl.keystore.type=PEM\nssl.keystore.location={pki.broker}\n"
    )
    broker = KafkaBroker(
        home=home / "kafka", port=ports["INTERNAL"], controller_port=ports["CONTROLLER"], lib=lib,
        overrides=broker_overrides(pki, ports),
        scram_users=[("SCRAM-SHA-512", "admin", ADMIN_PASSWORD), ("SCRAM-SHA-512", "limited", LIMITED_PASSWORD)],
    )
    broker.start(timeout=90)
    secure = SecureBroker(broker=broker, pki=pki, ports=ports)
    limited = "User:limited"
    acls = [
        ("--add", "--allow-principal", "User:CN=client", "--operation", "All", "--topic", "*",
         "--group", "*", "--transactional-id", "*", "--cluster"),
        ("--add", "--allow-principal", limited, "--operation", "Read", "--operation", "Write",
         "--operation", "Describe", "--operation", "DescribeConfigs", "--topic", "limited.",
         "--resource-pattern-type", "prefixed"),
        ("--add", "--allow-principal", limited, "--operation", "Read", "--operation", "Describe",
         "--topic", "bare.b", "--group", "limited-", "--resource-pattern-type", "prefixed"),
        ("--add", "--allow-principal", limited, "--operation", "Write", "--operation", "Describe",
         "--transactional-id", "eventq-replay.granted-", "--resource-pattern-type", "prefixed"),
    ]
    # One JVM per AclCommand (2-3 s each on an idle machine); independent, so run side by side.
    with ThreadPoolExecutor(len(acls)) as pool:
        list(pool.map(lambda args: secure.acl(*args), acls))
    asyncio.run(create_topics(secure.sasl(), LIMITED_TOPICS, partitions=2))
    return secure


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory, kafka_lib: Path) -> Iterator[SecureBroker]:
    """The secured broker of this session (own home and free ports, the dev stack's jars)."""
    from tests.conftest import free_ports

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the secured broker's certificates: apt-get install openssl")
    names = ("INTERNAL", "SECURE", "MTLS", "EXPIRED", "WRONGHOST", "CONTROLLER")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    secure = start_secure_broker(tmp_path_factory.mktemp("secure"), kafka_lib, ports)
    try:
        yield secure
    finally:
        secure.broker.stop()


app = App("secure")


@app.handler("demo.order.created.v1")
async def charge(event: Event, ctx: Context) -> None:
    """Rejects order "declined" (dead-lettered at once) unless SECURE_APP_FIXED=1."""
    if event.data["order_id"] == "declined" and os.environ.get("SECURE_APP_FIXED") != "1":
        raise Reject("order declined")
