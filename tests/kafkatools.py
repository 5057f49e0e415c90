"""Apache Kafka's own command-line tools, run from the dev stack's jars, as outside witnesses."""

from __future__ import annotations

from eventq_dev.devstack import StackSettings
from eventq_dev.devstack.kafka import ensure_kafka_jars, run_kafka_tool

CONSUMER_GROUPS = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
"""The class ``bin/kafka-consumer-groups.sh`` runs (Kafka 4.x)."""


def consumer_group_lag(bootstrap: str, group: str) -> dict[tuple[str, int], int | None]:
    """The LAG column of ``kafka-consumer-groups --describe --group G`` per (topic, partition).

    None where the tool prints ``-`` (no committed offset). Raises AssertionError, with the
    tool's output, if the tool reports an error (it exits 0 even then) or prints no table.
    """
    lib = ensure_kafka_jars(StackSettings.from_env())
    done = run_kafka_tool(lib, CONSUMER_GROUPS, "--bootstrap-server", bootstrap, "--describe", "--group", group)
    lines = done.stdout.splitlines()
    output = f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-2000:]}"
    if done.returncode != 0 or any(line.startswith("Error:") for line in lines):
        raise AssertionError(f"kafka-consumer-groups failed: {output}")
    header = next((line.split() for line in lines if line.split()[:2] == ["GROUP", "TOPIC"]), None)
    if header is None:
        raise AssertionError(f"kafka-consumer-groups printed no table: {output}")
    topic, partition, lag = header.index("TOPIC"), header.index("PARTITION"), header.index("LAG")
    found: dict[tuple[str, int], int | None] = {}
    for line in lines:
        cells = line.split()
        if len(cells) == len(header) and cells[0] == group:
            found[cells[topic], int(cells[partition])] = None if cells[lag] == "-" else int(cells[lag])
    return found
