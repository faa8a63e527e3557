"""Keys that pass alone but cannot work together: refused at load, naming both keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd import config as config_module
from streamd.config import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("settings", "keys"),
    [
        ({"supervisor": {"backoff_initial": 60, "backoff_max": 1}}, ("backoff_initial", "backoff_max")),
        ({"supervisor": {"crash_limit": 10, "crash_window": 30}}, ("crash_limit", "crash_window")),
        ({"kafka": {"topic": "t", "dead_letter_topic": "t"}}, ("kafka.dead_letter_topic", "kafka.topic")),
        ({"analytics": {"group": "g"}, "consumer": {"group": "g"}}, ("analytics.group", "consumer.group")),
        ({"analytics": {"collection": "m"}, "mongodb": {"collection": "m"}}, ("analytics.collection", "mongodb.")),
    ],
)
def test_keys_that_cannot_work_together_are_refused_naming_both(settings, keys):
    with pytest.raises(ConfigError) as refused:
        config_module.from_mapping(settings)
    for key in keys:
        assert key in str(refused.value)
    assert str(refused.value).endswith(".") and "\n" not in str(refused.value)


def test_keys_that_can_work_together_are_accepted():
    config_module.from_mapping(
        {"supervisor": {"backoff_initial": 1, "backoff_max": 1, "crash_limit": 5, "crash_window": 4}}
    )
    config_module.from_mapping({"analytics": {"enabled": False, "group": "g"}, "consumer": {"group": "g"}})
    config_module.load(REPO / "config.yaml", environ={})
