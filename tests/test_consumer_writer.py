"""The store writer: writes run in their own thread, and what they raise is raised where the outcome is taken."""

from __future__ import annotations

import threading

from streamd.consumer.writer import StoreWriter


def test_a_write_runs_in_the_writer_thread_and_its_outcome_comes_with_the_future():
    writer = StoreWriter()
    try:
        future = writer.start(lambda: threading.current_thread().name)
        assert future.result(timeout=10).startswith("store-writer")
    finally:
        writer.close()


def test_an_exception_of_the_write_is_raised_where_its_outcome_is_taken():
    writer = StoreWriter()
    try:
        future = writer.start(lambda: 1 / 0)
        assert isinstance(future.exception(timeout=10), ZeroDivisionError)
    finally:
        writer.close()
