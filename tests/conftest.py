from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Server, build_wheel


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local package index of wheels built here: the tests never reach a network."""
    folder = tmp_path_factory.mktemp("wheels")
    build_wheel(folder, "greetlib", "1.0", "greetlib", "def greet(who):\n    return 'hello ' + who\n")
    build_wheel(folder, "otherlib", "2.0", "otherlib", "VALUE = 42\n")
    return folder


def _server(tmp_path_factory: pytest.TempPathFactory, wheels: Path, *args: str) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("srv"), wheels, list(args)).start()
    try:
        yield server
    finally:
        if server.proc and server.proc.poll() is None:
            server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[Server]:
    """One server for a module's tests, with a short timeout so 504s are quick."""
    yield from _server(tmp_path_factory, wheels, "--timeout", "2", "--client-timeout", "3")


@pytest.fixture
def fresh_server(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[Server]:
    yield from _server(tmp_path_factory, wheels, "--timeout", "5")
