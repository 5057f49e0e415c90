"""A real three-node KRaft Kafka cluster on loopback, for the fault-injection suite.

Every node is a :class:`~eventq_dev.devstack.kafka.KafkaBroker` that is both broker and
controller, on free loopback ports, under ``<home>/node<N>``. Killing one node (even the
active controller) leaves a quorum of two, so the cluster keeps serving: partitions it
led get a new leader once it is fenced (about 3 s, ``broker.session.timeout.ms``).

The methods that start and stop processes are synchronous (call them through
``asyncio.to_thread``); the ones that ask the cluster for metadata are coroutines.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from eventq.errors import DevStackError
from eventq_dev.devstack.kafka import KafkaBroker, random_cluster_id
from tests.conftest import free_ports


def cluster_overrides(size: int) -> dict[str, str]:
    """The properties every node gets on top of the dev stack's single-node template."""
    replicas = str(size)
    quorum = str(size // 2 + 1)
    return {
        # Every internal topic, and by default every topic, has a replica on each node, and
        # an acks=all write needs a majority of them: one node can die without losing a
        # write or stopping writes.
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": quorum,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": quorum,
        "default.replication.factor": replicas,
        "min.insync.replicas": quorum,
        # Defaults 9000/2000: a SIGKILLed node is fenced, losing its leaderships and its
        # ISR memberships, after ~3 s instead of ~9 s.
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "500",
        # The default, stated because the suite relies on it: a replica that missed
        # acknowledged writes never becomes leader.
        "unclean.leader.election.enable": "false",
    }


class KafkaCluster:
    """``size`` KRaft nodes (ids 1..size) forming one cluster on 127.0.0.1.

    All nodes share one cluster id and one static voter set, so a node killed and
    restarted with the same home rejoins with its data.
    """

    def __init__(self, home: Path, lib: Path, size: int = 3) -> None:
        ports = free_ports(2 * size)
        broker_ports, controller_ports = ports[:size], ports[size:]
        voters = ",".join(f"{i}@127.0.0.1:{port}" for i, port in enumerate(controller_ports, 1))
        cluster_id = random_cluster_id()
        overrides = cluster_overrides(size)
        self.home = home
        self.nodes: list[KafkaBroker] = [
            KafkaBroker(
                home=home / f"node{i}",
                port=broker_port,
                controller_port=controller_port,
                lib=lib,
                node_id=i,
                voters=voters,
                cluster_id=cluster_id,
                overrides=overrides,
            )
            for i, (broker_port, controller_port) in enumerate(zip(broker_ports, controller_ports, strict=True), 1)
        ]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise ValueError(f"no node {node_id} in this cluster (ids 1..{len(self.nodes)})")

    def start(self, timeout: float = 90) -> None:
        """Launch every node that is not running, then return once every node serves.

        All nodes are launched before any is waited for: a broker opens its port only once
        a majority of the voters runs. Nodes already running are left alone, so this also
        heals a cluster. Raises :class:`DevStackError` naming the node (with the tail of
        its server.log) if one cannot start or is not ready within ``timeout`` seconds;
        the nodes this call launched are then stopped again.
        """
        deadline = time.monotonic() + timeout
        launched: list[KafkaBroker] = []
        try:
            for node in self.nodes:
                if not node.is_running():
                    node.launch()
                    launched.append(node)
            for node in self.nodes:
                self._wait_ready(node, max(deadline - time.monotonic(), 0.1))
        except DevStackError:
            _stop_together(launched, timeout=10)
            raise

    def _wait_ready(self, node: KafkaBroker, timeout: float) -> None:
        try:
            node.wait_ready(timeout)
        except DevStackError as exc:
            running = [n.node_id for n in self.nodes if n.is_running()]
            raise DevStackError(
                f"node {node.node_id} of the Kafka cluster under {self.home} did not start "
                f"(nodes running: {running or 'none'}): {exc}"
            ) from exc

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would; returns once its process is gone."""
        self.node(node_id).kill()

    def restart(self, node_id: int, timeout: float = 60) -> None:
        """Start a stopped or killed node again with its data; returns once it serves."""
        node = self.node(node_id)
        node.launch()
        self._wait_ready(node, timeout)

    def stop(self, timeout: float = 30) -> None:
        """Stop every node: SIGTERM to all at once, then SIGKILL whatever is left after ``timeout``."""
        _stop_together([node for node in self.nodes if node.is_running()], timeout)

    async def leader_of(self, topic: str, partition: int) -> int:
        """The node id leading ``partition`` now, from fresh metadata; -1 if it has none."""
        for described in await self.describe(topic):
            if described["partition"] == partition:
                return int(described["leader"])
        return -1

    async def wait_healthy(self, topic: str, timeout: float) -> None:
        """Return once every partition of ``topic`` has a running leader and all its replicas in sync.

        A node that was just killed still counts as leader or in-sync replica until it is
        fenced; only running nodes count here, so a kill is never mistaken for health.
        Raises :class:`DevStackError` with the last state seen after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            running = {node.node_id for node in self.nodes if node.is_running()}
            partitions = await self.describe(topic)
            unhealthy = [
                p
                for p in partitions
                if p["leader"] not in running or not set(p["replicas"]) == set(p["isr"]) <= running
            ]
            if partitions and not unhealthy:
                return
            if time.monotonic() > deadline:
                state = [(p["partition"], p["leader"], p["isr"]) for p in unhealthy] or "no partitions"
                raise DevStackError(
                    f"topic {topic} not healthy within {timeout:.0f} s (running nodes "
                    f"{sorted(running)}; unhealthy (partition, leader, isr): {state})"
                )
            await asyncio.sleep(0.25)

    async def describe(self, topic: str, timeout: float = 10) -> list[dict[str, Any]]:
        """The partitions of ``topic`` as a running node sees them now (``partition``,
        ``leader``, ``replicas``, ``isr``, ``offline_replicas``, ``error_code``); empty if
        the topic does not exist.

        A new admin client per call, so nothing comes from a client-side cache. Until a
        killed node is fenced it is still listed as a broker, and the admin client sends
        to a random listed broker: a request that fails to connect is simply tried again.
        """
        deadline = time.monotonic() + timeout
        while True:
            running = [node for node in self.nodes if node.is_running()]
            if not running:
                raise DevStackError(f"no node of the Kafka cluster under {self.home} is running")
            admin = AIOKafkaAdminClient(
                bootstrap_servers=",".join(f"127.0.0.1:{node.port}" for node in running),
                client_id="eventq-faults-cluster",
                request_timeout_ms=5000,
            )
            try:
                await admin.start()
                [described] = await admin.describe_topics([topic])
            except (TimeoutError, KafkaError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise DevStackError(f"could not describe topic {topic} within {timeout:.0f} s: {exc!r}") from exc
                await asyncio.sleep(0.1)
                continue
            finally:
                await admin.close()
            partitions: list[dict[str, Any]] = described["partitions"]
            return sorted(partitions, key=lambda p: int(p["partition"]))


def _stop_together(nodes: list[KafkaBroker], timeout: float) -> None:
    # Stopped one after another, the last node's controlled shutdown waits for a controller
    # quorum that is already gone and is SIGKILLed after `timeout` (seen: 30 s); signalled
    # together, three nodes are gone in about 7 s.
    if nodes:
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda node: node.stop(timeout), nodes))
