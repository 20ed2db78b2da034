"""The virtual lab (control/lab) for the end-to-end tests: one lab per module, checked clean (netlab.assert_clean)
at the end, also when a test failed."""

from __future__ import annotations

import pytest

from control.lab.topology import Topology
from netlab import lab_name, running_lab


@pytest.fixture(scope="module")
def lab():
    """A lab with three edges and 32 client addresses, removed (and checked clean) at the end of the module."""
    yield from running_lab(Topology(lab_name(), edges=3, clients=32))
