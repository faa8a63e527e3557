"""Log once when down, once when back: which failures are news, and what a recovery reports."""

from __future__ import annotations

import pytest

from streamd.outage import Outage, Recovery


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr("streamd.outage.time.monotonic", lambda: now[0])
    return now


def test_only_the_first_failure_of_an_outage_is_news_and_the_recovery_says_how_long_and_how_many(clock):
    outage = Outage()
    assert outage.recovered() is None, "nothing was down"
    assert outage.failed() and outage.down
    clock[0] += 2.5
    assert not outage.failed() and not outage.failed()
    assert outage.recovered() == Recovery(seconds=2.5, failures=3)
    assert not outage.down and outage.recovered() is None, "one recovery per outage"
    assert outage.failed(), "the next outage is news again"


def test_a_failure_with_another_cause_is_news_and_the_outage_keeps_its_start(clock):
    outage = Outage()
    assert outage.failed("broker down")
    assert not outage.failed("broker down")
    clock[0] += 1.0
    assert outage.failed("not authorized")
    assert outage.failed("broker down"), "back to the first cause is a change too"
    assert outage.recovered() == Recovery(seconds=1.0, failures=4)
