"""The browser tests' JupyterLab server (tests/browser_helpers.py) survives losing its port."""
from __future__ import annotations

import socket

from browser_helpers import LabServer


def test_lab_server_takes_another_port_when_its_port_was_taken(tmp_path):
    """The port is picked free, then bound by the server seconds later; a process that binds it in between
    (a kernel starting in the other test worker) must not fail the browser tests: the server starts on another."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with LabServer(tmp_path, port=taken) as lab:
            assert lab.port != taken
            assert lab.api("GET", "status")["started"]
