"""streamd.group_offsets: where a consumer group stands, asked from outside it, against the real Kafka."""

from __future__ import annotations

import contextlib

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamd.config import Config
from streamd.group_offsets import KafkaUnreadable, committed, partitions_of, watermarks
from streamd.kafka import ensure_topic
from tests.probes import free_port


@pytest.mark.integration
def test_committed_offsets_and_watermarks_are_read_without_joining_the_group(pipeline_config: Config):
    topic, group = pipeline_config.kafka.topic, pipeline_config.consumer.group
    ensure_topic(pipeline_config, topic, partitions=2)
    producer = Producer({"bootstrap.servers": pipeline_config.kafka.brokers})
    for partition, count in ((0, 5), (1, 2)):
        for _ in range(count):
            producer.produce(topic, b"{}", partition=partition)
    assert producer.flush(10) == 0
    admin = AdminClient({"bootstrap.servers": pipeline_config.kafka.brokers})
    asked = partitions_of(topic, [1, 0])

    assert committed(admin, group, asked, timeout=10) == {}, "a group that never committed has no offsets"
    with contextlib.closing(Consumer({"bootstrap.servers": pipeline_config.kafka.brokers, "group.id": group})) as c:
        c.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)

    assert committed(admin, group, asked, timeout=10) == {(topic, 0): 3}, "a partition never committed is left out"
    assert watermarks(admin, asked, timeout=10) == {(topic, 0): (0, 5), (topic, 1): (0, 2)}
    assert admin.describe_consumer_groups([group])[group].result().members == [], "the reader never joined"


def test_no_partitions_ask_nothing():
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{free_port()}"})
    assert committed(admin, "any", [], timeout=1) == {}
    assert watermarks(admin, [], timeout=1) == {}


def test_brokers_that_do_not_answer_are_one_sentence_naming_the_question():
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{free_port()}"})
    with pytest.raises(KafkaUnreadable, match="Kafka did not give the topics' offsets"):
        watermarks(admin, partitions_of("absent", [0]), timeout=1)
    with pytest.raises(KafkaUnreadable, match="Kafka did not say where group g is"):
        committed(admin, "g", partitions_of("absent", [0]), timeout=1)
