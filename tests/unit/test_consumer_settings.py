"""Consumer daemon settings: validation messages, EVENTQ_* parsing, dead-letter topics, retry back-off."""

from __future__ import annotations

import random

import pytest

from eventq.consumers import ConsumerSettings
from eventq.consumers.handle import backoff_delay
from eventq.errors import ConfigError


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be at least 1 (EVENTQ_MAX_BATCH_SIZE)"),
        ({"ordering": "random"}, "ordering 'random' (EVENTQ_ORDERING) is unknown; use partition or key"),
        ({"backoff_initial_s": 5.0, "backoff_max_s": 1.0}, "backoff_max_s must be at least backoff_initial_s"),
        ({"backoff_jitter": 2}, "backoff_jitter must be between 0 and 1 (EVENTQ_BACKOFF_JITTER)"),
        ({"on_unknown_type": "drop"}, "on_unknown_type 'drop' (EVENTQ_ON_UNKNOWN_TYPE) is unknown"),
        ({"max_attempts": 0}, "max_attempts must be at least 1 (EVENTQ_MAX_ATTEMPTS)"),
        ({"health_port": 70000}, "health_port must be 0-65535"),
        ({"dead_letter_suffix": ""}, "dead_letter_suffix must not be empty"),
        ({"pool_size": 1}, "pool_size must be at least 2 (EVENTQ_DB_POOL_SIZE)"),
        (
            {"shutdown_grace_s": 50, "session_timeout_s": 10, "max_poll_interval_s": 60},
            "shutdown_grace_s + session_timeout_s (50 + 10) must be less than max_poll_interval_s (60)",
        ),
    ],
)
def test_invalid_value_names_the_field(fields: dict[str, object], message: str) -> None:
    """Each invalid value raises ConfigError whose message names the field (and its variable)."""
    with pytest.raises(ConfigError) as caught:
        ConsumerSettings(**fields)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_consuming_a_dead_letter_topic_is_refused() -> None:
    """A topic ending in the dead-letter suffix is refused: it would dead-letter into itself."""
    with pytest.raises(ConfigError) as caught:
        ConsumerSettings(topics=("orders", "orders.dlt"))
    message = str(caught.value)
    assert "topic 'orders.dlt' ends in the dead-letter suffix '.dlt'" in message
    assert "eventq dlq replay" in message


def test_defaults_are_valid_and_documented_values() -> None:
    """With no arguments the settings suit a small service: partition order, 5 attempts, dead letters on."""
    settings = ConsumerSettings()
    assert (settings.ordering, settings.max_attempts, settings.on_unknown_type) == ("partition", 5, "dead_letter")
    assert (settings.backoff_initial_s, settings.backoff_max_s, settings.backoff_jitter) == (0.5, 30.0, 0.2)
    assert settings.create_topics is True
    assert settings.health_port is None


def test_from_env_reads_eventq_variables() -> None:
    """EVENTQ_GROUP, _TOPICS (comma list), _ORDERING, _MAX_ATTEMPTS, _HEALTH_PORT and DLT creation map to fields."""
    settings = ConsumerSettings.from_env(
        {
            "EVENTQ_GROUP": "billing",
            "EVENTQ_TOPICS": "orders, payments ,,refunds",
            "EVENTQ_ORDERING": "key",
            "EVENTQ_MAX_ATTEMPTS": "9",
            "EVENTQ_HEALTH_PORT": "8081",
            "EVENTQ_CREATE_TOPICS": "false",
        }
    )
    assert settings.group_id == "billing"
    assert settings.topics == ("orders", "payments", "refunds")
    assert settings.ordering == "key"
    assert settings.max_attempts == 9
    assert settings.health_port == 8081
    assert settings.create_topics is False


def test_from_env_without_variables_gives_the_defaults() -> None:
    """An empty environment gives the same settings as the constructor's defaults."""
    assert ConsumerSettings.from_env({}) == ConsumerSettings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EVENTQ_CREATE_TOPICS": "maybe"}, "EVENTQ_CREATE_TOPICS='maybe' is not a boolean"),
        ({"EVENTQ_MAX_ATTEMPTS": "abc"}, "EVENTQ_MAX_ATTEMPTS='abc' is not an integer"),
        ({"EVENTQ_MAX_ATTEMPTS": "0"}, "EVENTQ_MAX_ATTEMPTS=0 is below the minimum of 1"),
        ({"EVENTQ_ORDERING": "random"}, "EVENTQ_ORDERING='random' is unknown"),
        ({"EVENTQ_TOPICS": "orders.dlt"}, "topic 'orders.dlt' ends in the dead-letter suffix"),
    ],
)
def test_from_env_refuses_bad_values(env: dict[str, str], message: str) -> None:
    """A malformed variable raises ConfigError naming the variable or field."""
    with pytest.raises(ConfigError) as caught:
        ConsumerSettings.from_env(env)
    assert message in str(caught.value)


def test_dead_letter_topic_is_the_source_topic_plus_suffix() -> None:
    """By default failed events of `orders` go to `orders.dlt`; a custom suffix is used as given."""
    assert ConsumerSettings().dead_letter_topic_for("orders") == "orders.dlt"
    assert ConsumerSettings(dead_letter_suffix="-dead").dead_letter_topic_for("orders") == "orders-dead"


def test_explicit_dead_letter_topic_serves_every_source() -> None:
    """With dead_letter_topic set, every source topic dead-letters there (and a .dlt topic may be consumed)."""
    settings = ConsumerSettings(topics=("orders", "archive.dlt"), dead_letter_topic="all-failures")
    assert settings.dead_letter_topic_for("orders") == "all-failures"
    assert settings.dead_letter_topic_for("archive.dlt") == "all-failures"


def test_consuming_the_explicit_dead_letter_topic_is_refused() -> None:
    """A consumed topic equal to dead_letter_topic is refused, like one ending in the suffix."""
    with pytest.raises(ConfigError, match="dead-letter"):
        ConsumerSettings(topics=("orders", "failures"), dead_letter_topic="failures")


# -- back-off ------------------------------------------------------------------------


def test_backoff_without_jitter_doubles_from_initial_up_to_the_cap() -> None:
    """With jitter 0 the delay after attempt n is initial·2^(n-1), capped at backoff_max_s."""
    settings = ConsumerSettings(backoff_initial_s=0.5, backoff_max_s=5.0, backoff_jitter=0)
    delays = [backoff_delay(attempt, settings) for attempt in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_of_zero_is_zero() -> None:
    """backoff_initial_s=0 turns back-off off (the test switch)."""
    settings = ConsumerSettings(backoff_initial_s=0, backoff_jitter=0.2)
    assert [backoff_delay(attempt, settings) for attempt in (1, 2, 10)] == [0.0, 0.0, 0.0]


def test_backoff_jitter_stays_within_its_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    """With jitter 0.2 every delay is within ±20% of the exact one, and the delays vary."""
    monkeypatch.setattr(random, "uniform", random.Random(20240501).uniform)
    settings = ConsumerSettings(backoff_initial_s=0.5, backoff_max_s=8.0, backoff_jitter=0.2)
    for attempt, exact in ((1, 0.5), (3, 2.0), (6, 8.0)):
        delays = [backoff_delay(attempt, settings) for _ in range(500)]
        assert all(exact * 0.8 <= d <= exact * 1.2 for d in delays), attempt
        assert min(delays) < exact * 0.9 and max(delays) > exact * 1.1, attempt


def test_backoff_stays_capped_for_very_many_attempts() -> None:
    """However many attempts were made, the delay is backoff_max_s, not an error."""
    settings = ConsumerSettings(backoff_initial_s=0.5, backoff_max_s=30.0, backoff_jitter=0)
    assert backoff_delay(1100, settings) == 30.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EVENTQ_MAX_BATCH_TIMEOUT_S": "inf"}, "EVENTQ_MAX_BATCH_TIMEOUT_S='inf' is not a finite number"),
        ({"EVENTQ_MAX_POLL_INTERVAL_S": "inf"}, "EVENTQ_MAX_POLL_INTERVAL_S='inf' is not a finite number"),
        ({"EVENTQ_SESSION_TIMEOUT_S": "nan"}, "EVENTQ_SESSION_TIMEOUT_S='nan' is not a finite number"),
        ({"EVENTQ_SHUTDOWN_GRACE_S": "9e9"}, "EVENTQ_SHUTDOWN_GRACE_S=9e+09 is above the maximum"),
        ({"EVENTQ_BACKOFF_JITTER": "1.5"}, "EVENTQ_BACKOFF_JITTER=1.5 is above the maximum of 1"),
        ({"EVENTQ_HEALTH_PORT": "70000"}, "EVENTQ_HEALTH_PORT=70000 is above the maximum of 65535"),
        ({"EVENTQ_ON_UNKNOWN_TYPE": "drop"}, "EVENTQ_ON_UNKNOWN_TYPE='drop' is unknown"),
        ({"EVENTQ_AUTO_OFFSET_RESET": "middle"}, "EVENTQ_AUTO_OFFSET_RESET='middle' is unknown"),
        ({"EVENTQ_LINGER_MS": "-5"}, "EVENTQ_LINGER_MS=-5 is below the minimum of 0"),
        ({"EVENTQ_COMPRESSION": "bogus"}, "EVENTQ_COMPRESSION='bogus' is unknown"),
        ({"EVENTQ_DATABASE_URL": "postgresql://u@h/db?sslmode=on"}, "has sslmode='on'"),
    ],
)
def test_every_daemon_variable_is_checked_by_name(env: dict[str, str], message: str) -> None:
    """Every variable the daemon reads, its producer's included, rejects a bad value naming the variable."""
    with pytest.raises(ConfigError) as caught:
        ConsumerSettings.from_env(env)
    assert message in str(caught.value)


def test_constructor_refuses_infinite_durations() -> None:
    """ConsumerSettings built in code refuses an infinite or NaN duration, naming its variable."""
    with pytest.raises(ConfigError, match=r"max_poll_interval_s must be a finite number.*EVENTQ_MAX_POLL_INTERVAL_S"):
        ConsumerSettings(max_poll_interval_s=float("inf"))
    with pytest.raises(ConfigError, match="max_batch_timeout_s"):
        ConsumerSettings(max_batch_timeout_s=float("nan"))


def test_daemon_producer_reads_the_producer_variables() -> None:
    """from_env fills ``producer`` from the producer variables; producer_for gives it the daemon's Kafka and schemas."""
    from eventq.config import KafkaSettings

    settings = ConsumerSettings.from_env(
        {"EVENTQ_MAX_EVENT_BYTES": "2000", "EVENTQ_LINGER_MS": "0", "EVENTQ_COMPRESSION": "gzip",
         "EVENTQ_DELIVERY_TIMEOUT_S": "9", "EVENTQ_SCHEMAS": "extra.schemas"},
        kafka=KafkaSettings(bootstrap_servers="k1:9092"),
    )
    producer = settings.producer_for(("app.schemas",))
    assert (producer.max_event_bytes, producer.linger_ms, producer.compression) == (2000, 0, "gzip")
    assert producer.delivery_timeout_s == 9
    assert producer.kafka.bootstrap_servers == "k1:9092"
    assert producer.schemas == ("app.schemas", "extra.schemas")


def test_overrides_win_over_variables() -> None:
    """from_env(**overrides) (what the CLI options pass) beats the variable without parsing it."""
    settings = ConsumerSettings.from_env({"EVENTQ_MAX_ATTEMPTS": "zero", "EVENTQ_GROUP": "g1"}, max_attempts=3)
    assert (settings.max_attempts, settings.group_id) == (3, "g1")
