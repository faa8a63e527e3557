"""Reaching a running supervisor: what readers that carry on without one (the API, the bench) get back."""

from __future__ import annotations

import select
import socket
import threading
from pathlib import Path

from streamd import config as config_module
from streamd import control


def state_in(tmp_path: Path) -> config_module.Config:
    return config_module.from_mapping({"state_dir": str(tmp_path / "state")})


def test_no_supervisor_is_no_answer_and_no_problem(tmp_path):
    assert control.status_if_running(state_in(tmp_path)) == (None, None)


def test_a_running_supervisor_answers_its_status(tmp_path):
    config = state_in(tmp_path)
    server = control.ControlServer(config)
    server.open()

    def serve() -> None:
        select.select([server.fileno()], [], [], 10.0)
        server.serve_one(lambda request: {"pid": 1, "children": [], "request": request})

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert control.status_if_running(config) == ({"pid": 1, "children": [], "request": "status"}, None)
    finally:
        thread.join()
        server.close()


def test_a_supervisor_hanging_up_without_an_answer_is_a_problem_not_an_error(tmp_path):
    config = state_in(tmp_path)
    config.state_path.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(control.socket_path(config)))
        listener.listen(1)

        def hang_up() -> None:
            conn, _ = listener.accept()
            conn.close()

        thread = threading.Thread(target=hang_up)
        thread.start()
        answer, problem = control.status_if_running(config)
        thread.join()
    assert answer is None and problem
