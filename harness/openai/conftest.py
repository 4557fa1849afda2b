"""Fixtures of the OpenAI-compatible suite: the target (any base URL) and a probe per test.

Options come from the harness plugin (``--openai-target``, ``--openai-model``, ``--token-env``); they
are read with defaults so the suite also runs under an older plugin. Without ``--openai-target`` the
suite talks to the orchestrator's HTTP base from the plugin's ``orchestrator`` fixture: the embedded
reference, started as a subprocess, unless ``--target-http`` names another.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from llorch.harness.openai.probes import OpenAIProbe

RecordProperty = Callable[[str, object], None]
PROBE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class OpenAITarget:
    """What the suite knows about a target: where it is, which model to ask for, and its token."""

    base_url: str
    model: str
    token: str | None
    auth_configured: bool


def _option(config: pytest.Config, name: str) -> str | None:
    value = config.getoption(name, default=None)
    if isinstance(value, list | tuple):  # an append-style option: one target per run
        value = value[0] if value else None
    return str(value) if value else None


def _first_model(base_url: str, token: str | None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=30.0)
        data = r.json()["data"]
        return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise pytest.UsageError(
            f"cannot pick a model from {base_url}/v1/models ({exc!r}); pass --openai-model") from exc


@pytest.fixture(scope="session")
def openai_target(request: pytest.FixtureRequest) -> OpenAITarget:
    """The OpenAI-compatible server under test: ``--openai-target``, else the orchestrator's HTTP base
    (the embedded reference the plugin starts)."""
    url = _option(request.config, "--openai-target")
    if not url:
        http = getattr(request.getfixturevalue("orchestrator"), "http", None)
        if not http:
            pytest.skip("no OpenAI-compatible target: pass --openai-target URL")
        url = str(http)
    url = url.rstrip("/")
    env = _option(request.config, "--token-env")
    token = os.environ.get(env) if env else None
    if env and not token:
        raise pytest.UsageError(f"--token-env {env}: the variable is not set")
    model = _option(request.config, "--openai-model") or _first_model(url, token)
    from llorch.harness.results import TARGET_INFO

    request.config.stash.setdefault(TARGET_INFO, {}).update(
        {"kind": "openai", "address": url, "model": model})
    return OpenAITarget(url, model, token, auth_configured=bool(token))


@pytest.fixture(scope="session")
def openai_http() -> Iterator[httpx.Client]:
    """One connection pool for the whole suite (a client per request would cost a TLS context each)."""
    with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="session")
def openai_answers() -> dict[Any, Any]:
    """Answers shared by the checks of one run (one request, several requirements); per session, so
    a later run against a server on a reused port never sees them."""
    return {}


@pytest.fixture
def oai(openai_target: OpenAITarget, openai_http: httpx.Client,
        record_property: RecordProperty) -> OpenAIProbe:
    """A probe for one test; failing checks attach their evidence to the test's results."""
    return OpenAIProbe(openai_target.base_url, openai_target.model, openai_target.token,
                       record=record_property, client=openai_http, timeout=PROBE_TIMEOUT_S)


@pytest.fixture(autouse=True)
def _record_reqs(request: pytest.FixtureRequest, record_property: RecordProperty) -> None:
    """Put the cited IDs in JUnit properties too, so a bare JUnit reader sees them."""
    ids = [str(a) for m in request.node.iter_markers("req") for a in m.args]
    if ids:
        record_property("reqs", " ".join(ids))
