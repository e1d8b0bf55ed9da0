"""Fixtures of the fault suite: its own two embedded servers (source and serving),
stopped at the end of the session whatever happened."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.servers import FaultServer, start_servers


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: fault-injection suite (tests/faults): SIGKILLs, restarts, cuts")


@pytest.fixture(scope="session")
def fault_servers() -> Iterator[tuple[FaultServer, FaultServer]]:
    source, serving = start_servers()
    try:
        yield source, serving
    finally:
        for server in (source, serving):
            server.stop()
