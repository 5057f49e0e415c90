"""The fault-injection suite: "nothing lost, each recorded once" under crashes and outages.

A workload of N events (unique ids, per-key sequence numbers, a few poison events and
malformed records) is published to a 6-partition topic while three consumer daemons, each
its own OS process, consume it and a fault is injected: consumer kill -9 and crash
points, a zombie consumer, a rebalance storm, broker kill -9, leader kills in a
three-node cluster, a PostgreSQL crash and pause, a missing dead-letter topic, a replay
killed mid-run. After healing and draining, the properties P1–P6 are checked and reported.
The outbox rows O1–O4 write the workload through the transactional outbox instead (a
tenth of the transactions rolling back) and run ``eventq outbox relay`` processes, which
they kill, race, or cut off from the broker or PostgreSQL; P7–P9 check the topic, the
rolled-back events and the outbox table (``outbox.py``).

* ``python -m tests.faults`` runs the whole matrix (``make faults``): see ``__main__``.
* ``test_faults.py`` runs baseline, F1, F4, F6, F7 and O1 at a reduced size in CI.
* ``docs/faults.md`` explains the properties and holds the latest full results.
"""
