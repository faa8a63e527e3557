"""Kafka clients and topics: settings from config.kafka, and topic creation on the real broker."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streamd import config as config_module
from streamd.config import Config, ConfigError
from streamd.kafka import REPEAT_WINDOW, KafkaUnavailable, client_settings, ensure_topic, make_client
from tests.probes import free_port


def test_client_settings_add_kafka_client_extras_but_the_role_has_the_last_word():
    settings = config_module.from_mapping(
        {"kafka": {"brokers": "b1:9092,b2:9092", "client": {"security.protocol": "SSL", "acks": "1"}}}
    ).kafka
    properties = client_settings(settings, "producer", {"acks": "all"})
    assert properties["bootstrap.servers"] == "b1:9092,b2:9092"
    assert properties["security.protocol"] == "SSL"
    assert properties["acks"] == "all"
    assert properties["client.id"] == "streamd-producer"


def test_role_defaults_yield_to_kafka_client():
    plain = config_module.from_mapping({}).kafka
    tuned = config_module.from_mapping({"kafka": {"client": {"session.timeout.ms": 30000}}}).kafka
    assert client_settings(plain, "consumer", defaults={"session.timeout.ms": 10000})["session.timeout.ms"] == 10000
    assert client_settings(tuned, "consumer", defaults={"session.timeout.ms": 10000})["session.timeout.ms"] == 30000


def test_librdkafka_lines_repeated_while_a_broker_is_down_are_logged_once_per_window(caplog, monkeypatch):
    logger = client_settings(config_module.from_mapping({}).kafka, "repeat-test")["logger"]
    refused = "FAIL [thrd:127.0.0.1:9092/bootstrap]: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"
    with caplog.at_level(logging.INFO, logger="kafka.repeat-test"):
        for elapsed in (0, 1, 250):
            logger.error("%s (after %dms in state CONNECT)", refused, elapsed)
        logger.error("FAIL [thrd:GroupCoordinator]: GroupCoordinator: Disconnected")
        clock = time.monotonic() + REPEAT_WINDOW + 1
        monkeypatch.setattr(time, "monotonic", lambda: clock)
        logger.error("%s (after 3ms in state CONNECT)", refused)
    assert [r.getMessage().split(": ")[-1] for r in caplog.records] == [
        "Connection refused (after 0ms in state CONNECT)",
        "Disconnected",
        "Connection refused (after 3ms in state CONNECT)",
    ]


def test_a_property_librdkafka_does_not_know_is_a_config_error_naming_kafka_client():
    settings = config_module.from_mapping({"kafka": {"client": {"no.such.property": "1"}}}).kafka
    with pytest.raises(ConfigError, match=r"^kafka.client: .*no.such.property"):
        make_client(Producer, settings, "producer")


@pytest.mark.integration
def test_ensure_topic_creates_the_topic_once_with_the_configured_partitions(pipeline_config: Config):
    name = pipeline_config.kafka.topic
    assert ensure_topic(pipeline_config, name, partitions=4) is True
    assert ensure_topic(pipeline_config, name, partitions=4) is False

    admin = AdminClient({"bootstrap.servers": pipeline_config.kafka.brokers})
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == 4


@pytest.mark.integration
def test_ensure_topic_defaults_to_kafka_partitions(pipeline_config: Config):
    name = pipeline_config.kafka.dead_letter_topic
    ensure_topic(pipeline_config, name)
    admin = AdminClient({"bootstrap.servers": pipeline_config.kafka.brokers})
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == pipeline_config.kafka.partitions


def test_ensure_topic_gives_up_within_its_timeout_when_no_broker_answers():
    brokers = f"127.0.0.1:{free_port()}"
    settings = config_module.from_mapping({"kafka": {"brokers": brokers}})
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match=f"^Kafka at {brokers} did not answer within 1s .*kafka.brokers"):
        ensure_topic(settings, "anything", timeout=1)
    assert time.monotonic() - started < 5
