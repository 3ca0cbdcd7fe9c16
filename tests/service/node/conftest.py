"""Fixtures for the DICOM node: settings on a free loopback port, started nodes that are always
stopped, and dcmtk's echoscu/storescu as real peers.

Fixtures: ``node_settings``, ``node_database``, ``start_node``, ``echoscu``, ``storescu``,
``dcmtk_tool``. The allowed peer is ``PEER_AE`` at 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import NodePeer, Settings
from service.db.engine import Database
from service.node.server import NodeServer
from tests.conftest import system_tool

#: The calling AE title the tests' peers use, allowed from 127.0.0.1.
PEER_AE = "PACS"
#: Seconds a dcmtk tool may run before the test fails (a hung association must not hang pytest).
TOOL_TIMEOUT_S = 60


@pytest.fixture
def dcmtk_tool() -> Callable[[str], str]:
    """``dcmtk_tool("storescu")``: the tool's path; the test fails (not skips) when it is missing."""

    def find(name: str) -> str:
        path = system_tool(name)
        if path is None:
            pytest.fail(f"{name} (dcmtk) is not installed (.ci/run installs it)", pytrace=False)
        return path

    return find


@pytest.fixture
def node_settings(tmp_path: Path) -> Settings:
    """Node settings: storage under ``tmp_path``, port 0 (the OS picks one), ``PEER_AE`` allowed
    from 127.0.0.1, short timeouts. Change fields with ``node_settings.model_copy(update=...)``."""
    settings = Settings(
        storage_root=tmp_path / "storage",
        node_peers=[NodePeer(ae_title=PEER_AE, host="127.0.0.1")],
        node_network_timeout_s=10,
        node_min_free_bytes=0,
    )
    # node_port must be ≥ 1 in the environment; 0 here asks the OS for a free port (no race).
    return settings.model_copy(update={"node_port": 0})


@pytest.fixture
def node_database(node_settings: Settings) -> Iterator[Database]:
    database = Database(node_settings.sqlalchemy_url)
    yield database
    database.dispose()


@pytest.fixture
def start_node(node_settings: Settings, node_database: Database) -> Iterator[Callable[..., NodeServer]]:
    """``start_node(**settings_updates)``: a started ``NodeServer`` on ``node_database``; every
    node started this way is stopped at teardown."""
    started: list[NodeServer] = []

    def start(**updates: Any) -> NodeServer:
        node = NodeServer(node_settings.model_copy(update=updates), node_database)
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def _dcmtk_env() -> dict[str, str]:
    # dcmtk as packaged leaves Nagle's algorithm on: with delayed ACKs every instance would
    # wait ~40 ms on loopback. Real sites tune this; the tests only need speed.
    return {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture
def echoscu(dcmtk_tool: Callable[[str], str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``echoscu(node, aet=PEER_AE, aec=None)``: run dcmtk's echoscu against ``node``."""
    tool = dcmtk_tool("echoscu")

    def run(node: NodeServer, aet: str = PEER_AE, aec: str | None = None) -> subprocess.CompletedProcess[str]:
        host, port = node.address
        called = aec or node.settings.node_ae_title
        command = [tool, "-aet", aet, "-aec", called, host, str(port)]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=_dcmtk_env()
        )

    return run


@pytest.fixture
def storescu(dcmtk_tool: Callable[[str], str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``storescu(node, *paths, options=(), aet=PEER_AE)``: send files or folders (recursively,
    ``*.dcm`` only) with dcmtk's storescu, proposing only the files' SOP classes (``-R``);
    ``-d`` so each response's "DIMSE Status" is in the output."""
    tool = dcmtk_tool("storescu")

    def run(
        node: NodeServer, *paths: Path, options: tuple[str, ...] = (), aet: str = PEER_AE
    ) -> subprocess.CompletedProcess[str]:
        host, port = node.address
        command = [
            tool,
            "-d",
            "-R",
            "+sd",
            "+r",
            "+sp",
            "*.dcm",
            "-aet",
            aet,
            "-aec",
            node.settings.node_ae_title,
        ]
        command += [*options, host, str(port), *map(str, paths)]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=_dcmtk_env()
        )

    return run
