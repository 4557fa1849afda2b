"""The llorch pytest plugin (auto-loaded via the ``pytest11`` entry point).

Registers the ``req`` marker that links a test to requirement IDs (D7) and the results recorder
(``--llorch-results``) that ``llorch trace report`` reads. Target options and client fixtures are
added here too; fixtures hand out clients, never reference internals.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llorch", "llorch conformance")
    group.addoption("--llorch-results", metavar="PATH", default=None,
                    help="write the llorch results JSON (read by `llorch trace report`) to PATH")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "req(*ids): requirement IDs (specs/) this test checks; it must fail if one is broken")
    path = config.getoption("--llorch-results", default=None)
    if path:
        from llorch.harness.results import ResultsRecorder

        config.pluginmanager.register(ResultsRecorder(config, path), "llorch-results")
