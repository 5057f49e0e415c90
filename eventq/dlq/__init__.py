"""Dead-letter tooling: read, inspect, archive and replay dead letters (the CLI is a thin layer).

:mod:`~eventq.dlq.letters` parses dead letters of any known dialect (eventq, Spring,
Karafka); :mod:`~eventq.dlq.inspect` summarises, finds and archives them;
:mod:`~eventq.dlq.replay` republishes them safely; :mod:`~eventq.dlq.commands` is the
``eventq dlq`` command group.
"""

from eventq.dlq.inspect import TopicSummary, archive, dead_letter_topics, find, summarize
from eventq.dlq.letters import Letter, parse, scan
from eventq.dlq.replay import Filters, ReplayReport, replay

__all__ = [
    "Filters", "Letter", "ReplayReport", "TopicSummary", "archive", "dead_letter_topics", "find", "parse", "replay",
    "scan", "summarize",
]
