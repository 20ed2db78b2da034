"""control/lab/load.py's byte count on the server side: only the lines of this load's own run count."""

from __future__ import annotations

from control.lab.load import server_bytes


def _line(t, addr, port, nbytes, uri):
    return {"t": t, "addr": addr, "port": port, "conn": 1, "bytes": nbytes, "status": 200, "uri": uri}


def test_server_bytes_counts_this_loads_connections_only():
    logs = {
        "e1": [
            _line(90.0, "203.0.113.5", 40001, 465, "/conn/159"),      # an earlier load, same address and port
            _line(100.0, "203.0.113.5", 40001, 480, "/conn/159"),
            _line(101.0, "203.0.113.5", 40001, 481, "/conn/159"),
            _line(101.5, "203.0.113.5", 40002, 300, "/"),             # a short connection: not a long-lived one
        ],
        "e2": [_line(102.0, "203.0.113.5", 40001, 470, "/conn/7")],   # the same client port on another edge
    }
    assert server_bytes(logs, 100.0) == {("e1", "203.0.113.5", 40001): 961, ("e2", "203.0.113.5", 40001): 470}
    assert server_bytes(logs, 0.0)[("e1", "203.0.113.5", 40001)] == 465 + 961
    assert server_bytes(logs, 200.0) == {}
