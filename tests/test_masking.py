"""Log lines never show a secret: every value a process has read as one becomes **** in each line it writes,
whoever wrote the line and wherever the value sits in it (message, arguments, exception)."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from streamd import config as config_module
from streamd import logs
from streamd.masking import MASK, remember_secret


@pytest.fixture
def process_log(monkeypatch):
    """This process's logging as logs.configure sets it up for a child (into a string), restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.configure(config_module.LoggingConfig(), "consumer-1")
    yield stream.getvalue
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_every_log_line_masks_a_remembered_secret_in_its_message_and_its_exception(process_log):
    secret = "log-hunter2-" + "x" * 8
    remember_secret(secret)
    logging.getLogger("streamd.consumer").warning("store refused %s for user app", secret)
    logging.getLogger("kafka.consumer").error(f"SASL authentication error: password={secret}")  # librdkafka's
    try:
        raise RuntimeError(f"connect failed with {secret}")
    except RuntimeError:
        logging.getLogger("streamd.consumer").exception("giving up")
    output = process_log()
    assert secret not in output
    assert output.count(MASK) == 3
    assert "store refused **** for user app" in output and "giving up" in output and "RuntimeError" in output


def test_the_secrets_a_config_holds_are_masked_in_log_lines_once_it_is_loaded(process_log, tmp_path):
    (tmp_path / "secret").write_text("file-hunter2-password\n")
    config_module.from_mapping(
        {
            "mongodb": {
                "uri": "mongodb://alice:uri-hunter2-password@db:27017",
                "password_file": str(tmp_path / "secret"),
            },
            "kafka": {
                "sasl_password": "key-hunter2-password",
                "client": {"ssl.key.password": "client-hunter2-password"},
            },
        }
    )
    for secret in ("uri-hunter2-password", "file-hunter2-password", "key-hunter2-password", "client-hunter2-password"):
        logging.getLogger("streamd").error("saw %s", secret)
    output = process_log()
    assert "hunter2" not in output and output.count(MASK) == 4


def test_masking_leaves_the_record_itself_whole_for_every_other_handler(process_log, caplog):
    secret = "shared-hunter2-" + "x" * 8
    remember_secret(secret)
    try:
        raise RuntimeError(f"connect failed with {secret}")
    except RuntimeError:
        logging.getLogger("streamd.consumer").exception("giving up on %s", "the store")
    assert secret not in process_log()
    (record,) = [record for record in caplog.records if record.getMessage() == "giving up on the store"]
    assert record.exc_info is not None, "a test's capture (or any other handler) still gets the exception"
