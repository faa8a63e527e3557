"""SingleFlight: one computation at a time, shared by the callers that waited for it, errors included."""

from __future__ import annotations

import threading
import time

import pytest

from streamd.api.single_flight import SingleFlight


def test_callers_waiting_on_a_failing_computation_share_its_error_and_the_next_call_retries():
    runs = []

    def compute() -> int:
        runs.append(1)
        time.sleep(0.5)
        if len(runs) == 1:
            raise ConnectionError("store went away")
        return len(runs)

    flight = SingleFlight(compute, fresh_seconds=60)
    outcomes: list[object] = []

    def call() -> None:
        try:
            outcomes.append(flight.get())
        except ConnectionError as exc:
            outcomes.append(str(exc))

    callers = [threading.Thread(target=call) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=30)

    assert outcomes == ["store went away"] * 4 and len(runs) == 1
    assert flight.get() == 2, "a failure is not kept: the next caller computes again"
    assert flight.get() == 2 and len(runs) == 2, "a success is kept while fresh"


def test_a_stale_result_is_computed_again():
    values = iter(range(10))
    flight = SingleFlight(lambda: next(values), fresh_seconds=0.05)
    first = flight.get()
    time.sleep(0.1)
    assert [first, flight.get()] == [0, 1]


def test_an_error_reaches_the_caller_that_computed():
    flight = SingleFlight(lambda: 1 / 0, fresh_seconds=1)
    with pytest.raises(ZeroDivisionError):
        flight.get()
