"""The store writer: writes run in their own thread, and on a single-writer store the consumers take turns."""

from __future__ import annotations

import threading
from pathlib import Path

from streamd.consumer.writer import StoreWriter


def test_a_write_runs_in_the_writer_thread_and_its_outcome_comes_with_the_future():
    writer = StoreWriter(None)
    try:
        future = writer.start(lambda: threading.current_thread().name)
        assert future.result(timeout=10).startswith("store-writer")
    finally:
        writer.close()


def test_an_exception_of_the_write_is_raised_where_its_outcome_is_taken():
    writer = StoreWriter(None)
    try:
        future = writer.start(lambda: 1 / 0)
        assert isinstance(future.exception(timeout=10), ZeroDivisionError)
    finally:
        writer.close()


def test_on_a_single_writer_store_two_consumers_never_write_at_the_same_time(tmp_path: Path):
    first, second = StoreWriter(tmp_path / "store-writer.lock"), StoreWriter(tmp_path / "store-writer.lock")
    first.single_writer()
    second.single_writer()
    inside, leave, second_in = threading.Event(), threading.Event(), threading.Event()

    def hold_a_turn() -> None:
        with first.turn():
            inside.set()
            leave.wait(10)

    def take_a_turn() -> None:
        with second.turn():
            second_in.set()

    holder = threading.Thread(target=hold_a_turn)
    holder.start()
    assert inside.wait(10)
    taker = threading.Thread(target=take_a_turn)
    taker.start()
    assert not second_in.wait(0.3), "the second consumer waits while the first writes"
    leave.set()
    assert second_in.wait(10), "and writes as soon as the first is done"
    holder.join(10)
    taker.join(10)
    first.close()
    second.close()


def test_a_store_that_takes_concurrent_writes_has_no_turns(tmp_path: Path):
    first, second = StoreWriter(tmp_path / "store-writer.lock"), StoreWriter(tmp_path / "store-writer.lock")
    with first.turn(), second.turn():
        pass  # both at once: nothing waits
    assert not (tmp_path / "store-writer.lock").exists()
    first.close()
    second.close()
