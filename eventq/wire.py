"""The wire contract: every Kafka record header name eventq writes or reads, declared once.

These names are a wire format: records already in topics carry exactly these bytes, so
a name here never changes (a new meaning is a new name), and ``tests/unit/test_wire.py``
pins every one. Other modules import header names from here and declare none of their own.

**Events**: CloudEvents 1.0 in the Kafka binding's binary mode (:mod:`eventq.schemas.envelope`),
written by eventq's producer and read from any producer:

====================  ======================  ================================================================
header                constant                meaning
====================  ======================  ================================================================
``ce_specversion``    :data:`H_SPECVERSION`   ``1.0``
``ce_id``             :data:`H_ID`            the event id
``ce_source``         :data:`H_SOURCE`        who published it
``ce_type``           :data:`H_TYPE`          the event type
``ce_time``           :data:`H_TIME`          RFC 3339 time (optional on read)
``ce_subject``        :data:`H_SUBJECT`       optional subject
``ce_correlationid``  :data:`H_CORRELATION`   extension: the id shared by every event of one flow
``ce_causationid``    :data:`H_CAUSATION`     extension: the id of the event whose handling published this one
``content-type``      :data:`H_CONTENT_TYPE`  the value's media type (structured mode when CloudEvents JSON)
``traceparent``       :data:`H_TRACEPARENT`   W3C trace context, optional
``tracestate``        :data:`H_TRACESTATE`    W3C trace state, optional
====================  ======================  ================================================================

**eventq's dead letters** (:mod:`eventq.consumers.deadletter`): every name starts with
:data:`DLT_PREFIX`; a letter drops any such headers of an earlier failure.

=============================  ==========================  =============================================================
header                         constant                    meaning
=============================  ==========================  =============================================================
``eventq-dlt-topic``           :data:`DLT_TOPIC`           source topic
``eventq-dlt-partition``       :data:`DLT_PARTITION`       source partition
``eventq-dlt-offset``          :data:`DLT_OFFSET`          source offset
``eventq-dlt-timestamp``       :data:`DLT_TIMESTAMP`       source record timestamp (ms)
``eventq-dlt-group``           :data:`DLT_GROUP`           consumer group
``eventq-dlt-handler``         :data:`DLT_HANDLER`         handler (module.qualname), empty if none ran
``eventq-dlt-reason``          :data:`DLT_REASON`          ``exhausted``, ``rejected``, ``invalid``, ``unknown-type``, …
``eventq-dlt-attempts``        :data:`DLT_ATTEMPTS`        handler attempts made (0 if none ran)
``eventq-dlt-first-failure``   :data:`DLT_FIRST_FAILURE`   RFC 3339 time of the first failure
``eventq-dlt-last-failure``    :data:`DLT_LAST_FAILURE`    RFC 3339 time of the last failure
``eventq-dlt-error-type``      :data:`DLT_ERROR_TYPE`      exception class, module-qualified
``eventq-dlt-error-message``   :data:`DLT_ERROR_MESSAGE`   its message (bounded)
``eventq-dlt-stacktrace``      :data:`DLT_STACKTRACE`      its traceback, innermost part (bounded)
``eventq-dlt-omitted``         :data:`DLT_OMITTED`         on a shrunk letter: what was left out
``eventq-dlt-original-bytes``  :data:`DLT_ORIGINAL_BYTES`  on a shrunk letter: the whole letter's size
``eventq-dlt-null-value``      :data:`DLT_NULL_VALUE`      ``true``: the original had neither key nor value
``eventq-dlt-traceparent``     :data:`DLT_TRACEPARENT`     W3C context of the dead letter's ``send`` span
=============================  ==========================  =============================================================

**eventq's retry records** (:mod:`eventq.consumers.retrytopics`), prefix :data:`RETRY_PREFIX`:

==============================  ===========================  ======================================
header                          constant                     meaning
==============================  ===========================  ======================================
``eventq-retry-topic``          :data:`RETRY_TOPIC`          source topic
``eventq-retry-partition``      :data:`RETRY_PARTITION`      source partition
``eventq-retry-offset``         :data:`RETRY_OFFSET`         source offset
``eventq-retry-timestamp``      :data:`RETRY_TIMESTAMP`      source record timestamp (ms)
``eventq-retry-attempts``       :data:`RETRY_ATTEMPTS`       attempts made so far
``eventq-retry-due``            :data:`RETRY_DUE`            when to try again (ms since the epoch)
``eventq-retry-first-failure``  :data:`RETRY_FIRST_FAILURE`  RFC 3339 time of the first failure
``eventq-retry-error-type``     :data:`RETRY_ERROR_TYPE`     the last failure's exception class
``eventq-retry-error-message``  :data:`RETRY_ERROR_MESSAGE`  its message (bounded)
==============================  ===========================  ======================================

**eventq's replays** (:mod:`eventq.dlq.replay` writes them; the daemon reads the count),
prefix :data:`REPLAY_PREFIX`:

=======================  ====================  ============================================================
header                   constant              meaning
=======================  ====================  ============================================================
``eventq-replay-count``  :data:`REPLAY_COUNT`  how often the event was replayed
``eventq-replay-from``   :data:`REPLAY_FROM`   a dead-letter position it was replayed from (one per replay)
``eventq-replay-run``    :data:`REPLAY_RUN`    the replay run's name
``eventq-replay-at``     :data:`REPLAY_AT`     RFC 3339 time of the replay
=======================  ====================  ============================================================

**Other writers' dead letters**, read (never written) by :mod:`eventq.dlq.letters`:

- Spring for Apache Kafka's DeadLetterPublishingRecoverer, prefix :data:`SPRING_DLT_PREFIX`:
  ``kafka_dlt-original-topic|partition|offset|timestamp|consumer-group`` and
  ``kafka_dlt-exception-fqcn|cause-fqcn|message|stacktrace`` (``SPRING_DLT_*``); partition,
  offset and timestamp may be big-endian binary integers. Spring writes more under the
  prefix (``kafka_dlt-original-timestamp-type``), which a replay drops by the prefix.
- Spring's retry topics: ``kafka_original-*`` (:data:`SPRING_ORIGINAL_PREFIX`),
  ``kafka_exception-*`` (:data:`SPRING_EXCEPTION_PREFIX`), ``retry_topic-attempts``
  (:data:`SPRING_RETRY_ATTEMPTS`, prefix :data:`SPRING_RETRY_TOPIC_PREFIX`), and the consumer
  group in :data:`SPRING_DLT_ORIGINAL_CONSUMER_GROUP`.
- Karafka 2.5+: ``source_topic|partition|offset|consumer_group|attempts|trace_id``
  (``KARAFKA_SOURCE_*``); before 2.5 the same with ``original_`` (``KARAFKA_ORIGINAL_*``).
"""

from __future__ import annotations

# -- CloudEvents 1.0, Kafka protocol binding, binary content mode -----------------------
H_SPECVERSION = "ce_specversion"
H_ID = "ce_id"
H_SOURCE = "ce_source"
H_TYPE = "ce_type"
H_TIME = "ce_time"
H_SUBJECT = "ce_subject"
H_CORRELATION = "ce_correlationid"
H_CAUSATION = "ce_causationid"
H_CONTENT_TYPE = "content-type"
# W3C Trace Context (the CloudEvents Distributed Tracing extension)
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"

# -- eventq dead letters -----------------------------------------------------------------
DLT_PREFIX = "eventq-dlt-"
DLT_TOPIC = DLT_PREFIX + "topic"
DLT_PARTITION = DLT_PREFIX + "partition"
DLT_OFFSET = DLT_PREFIX + "offset"
DLT_TIMESTAMP = DLT_PREFIX + "timestamp"
DLT_GROUP = DLT_PREFIX + "group"
DLT_HANDLER = DLT_PREFIX + "handler"
DLT_REASON = DLT_PREFIX + "reason"
DLT_ATTEMPTS = DLT_PREFIX + "attempts"
DLT_FIRST_FAILURE = DLT_PREFIX + "first-failure"
DLT_LAST_FAILURE = DLT_PREFIX + "last-failure"
DLT_ERROR_TYPE = DLT_PREFIX + "error-type"
DLT_ERROR_MESSAGE = DLT_PREFIX + "error-message"
DLT_STACKTRACE = DLT_PREFIX + "stacktrace"
DLT_OMITTED = DLT_PREFIX + "omitted"
DLT_ORIGINAL_BYTES = DLT_PREFIX + "original-bytes"
DLT_NULL_VALUE = DLT_PREFIX + "null-value"
DLT_TRACEPARENT = DLT_PREFIX + "traceparent"

# -- eventq retry records ----------------------------------------------------------------
RETRY_PREFIX = "eventq-retry-"
RETRY_TOPIC = RETRY_PREFIX + "topic"
RETRY_PARTITION = RETRY_PREFIX + "partition"
RETRY_OFFSET = RETRY_PREFIX + "offset"
RETRY_TIMESTAMP = RETRY_PREFIX + "timestamp"
RETRY_ATTEMPTS = RETRY_PREFIX + "attempts"
RETRY_DUE = RETRY_PREFIX + "due"
RETRY_FIRST_FAILURE = RETRY_PREFIX + "first-failure"
RETRY_ERROR_TYPE = RETRY_PREFIX + "error-type"
RETRY_ERROR_MESSAGE = RETRY_PREFIX + "error-message"

# -- eventq replays ----------------------------------------------------------------------
REPLAY_PREFIX = "eventq-replay-"
REPLAY_COUNT = REPLAY_PREFIX + "count"
REPLAY_FROM = REPLAY_PREFIX + "from"
REPLAY_RUN = REPLAY_PREFIX + "run"
REPLAY_AT = REPLAY_PREFIX + "at"

# -- Spring for Apache Kafka: DeadLetterPublishingRecoverer --------------------------------
SPRING_DLT_PREFIX = "kafka_dlt-"
SPRING_DLT_ORIGINAL_TOPIC = "kafka_dlt-original-topic"
SPRING_DLT_ORIGINAL_PARTITION = "kafka_dlt-original-partition"
SPRING_DLT_ORIGINAL_OFFSET = "kafka_dlt-original-offset"
SPRING_DLT_ORIGINAL_TIMESTAMP = "kafka_dlt-original-timestamp"
# Spring's KafkaHeaders.ORIGINAL_CONSUMER_GROUP: also what its retry topics write.
SPRING_DLT_ORIGINAL_CONSUMER_GROUP = "kafka_dlt-original-consumer-group"
SPRING_DLT_EXCEPTION_FQCN = "kafka_dlt-exception-fqcn"
SPRING_DLT_EXCEPTION_CAUSE_FQCN = "kafka_dlt-exception-cause-fqcn"
SPRING_DLT_EXCEPTION_MESSAGE = "kafka_dlt-exception-message"
SPRING_DLT_EXCEPTION_STACKTRACE = "kafka_dlt-exception-stacktrace"

# -- Spring for Apache Kafka: retry topics -----------------------------------------------
SPRING_ORIGINAL_PREFIX = "kafka_original-"
SPRING_ORIGINAL_TOPIC = "kafka_original-topic"
SPRING_ORIGINAL_PARTITION = "kafka_original-partition"
SPRING_ORIGINAL_OFFSET = "kafka_original-offset"
SPRING_ORIGINAL_TIMESTAMP = "kafka_original-timestamp"
SPRING_ORIGINAL_CONSUMER_GROUP = "kafka_original-consumer-group"  # not what Spring writes; read in case another does
SPRING_EXCEPTION_PREFIX = "kafka_exception-"
SPRING_EXCEPTION_FQCN = "kafka_exception-fqcn"
SPRING_EXCEPTION_CAUSE_FQCN = "kafka_exception-cause-fqcn"
SPRING_EXCEPTION_MESSAGE = "kafka_exception-message"
SPRING_EXCEPTION_STACKTRACE = "kafka_exception-stacktrace"
SPRING_RETRY_TOPIC_PREFIX = "retry_topic-"
SPRING_RETRY_ATTEMPTS = "retry_topic-attempts"

# -- Karafka 2.5+ ------------------------------------------------------------------------
KARAFKA_SOURCE_TOPIC = "source_topic"
KARAFKA_SOURCE_PARTITION = "source_partition"
KARAFKA_SOURCE_OFFSET = "source_offset"
KARAFKA_SOURCE_CONSUMER_GROUP = "source_consumer_group"
KARAFKA_SOURCE_ATTEMPTS = "source_attempts"
KARAFKA_SOURCE_TRACE_ID = "source_trace_id"

# -- Karafka before 2.5 ------------------------------------------------------------------
KARAFKA_ORIGINAL_TOPIC = "original_topic"
KARAFKA_ORIGINAL_PARTITION = "original_partition"
KARAFKA_ORIGINAL_OFFSET = "original_offset"
KARAFKA_ORIGINAL_CONSUMER_GROUP = "original_consumer_group"
KARAFKA_ORIGINAL_ATTEMPTS = "original_attempts"
KARAFKA_ORIGINAL_TRACE_ID = "original_trace_id"
