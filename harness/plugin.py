"""The llorch pytest plugin (auto-loaded via the ``pytest11`` entry point).

Registers the ``req`` marker that links a test to requirement IDs (D7) and the results recorder
(``--llorch-results``) that ``llorch trace report`` reads. Target options and client fixtures are
added here too; fixtures hand out clients, never reference internals.

Targets: ``--target grpc://H:P`` (+ ``--target-http``) for an orchestrator, ``--adapter-target`` for a
worker adapter, ``--openai-target`` for an OpenAI-compatible server. Without them, the fixture that
needs one starts the embedded reference as a subprocess (once per session, lazily) and stops it at
the end. ``--profile`` deselects tests whose cited requirements all belong to other profiles.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

REQ_ID = re.compile(r"[A-Z]{2,5}-\d{4}")
HYPOTHESIS_CI = "llorch-ci"
HYPOTHESIS_SOAK = "llorch-soak"

# Hypothesis over the network (D21): no per-example deadline, bounded runs in CI, long ones in soak.
settings.register_profile(HYPOTHESIS_CI, max_examples=15, stateful_step_count=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                          derandomize=True, database=None)
settings.register_profile(HYPOTHESIS_SOAK, max_examples=300, stateful_step_count=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def hypothesis_settings() -> settings:
    """The profile the network suites use: ``LLORCH_HYPOTHESIS=llorch-soak`` for ``nox -s soak``.

    Applied per test (not loaded globally) so the reference's own unit properties keep their limits.
    """
    return settings.get_profile(os.environ.get("LLORCH_HYPOTHESIS", HYPOTHESIS_CI))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llorch", "llorch conformance")
    group.addoption("--llorch-results", metavar="PATH", default=None,
                    help="write the llorch results JSON (read by `llorch trace report`) to PATH")
    group.addoption("--target", metavar="grpc://H:P", default=None,
                    help="orchestrator under test (default: start the embedded reference)")
    group.addoption("--target-http", metavar="URL", default=None,
                    help="the orchestrator's HTTP base URL (http://H:Q)")
    group.addoption("--adapter-target", metavar="grpc://H:P", default=None,
                    help="worker adapter under test (default: start `llorch adapter serve`)")
    group.addoption("--openai-target", metavar="URL", default=None,
                    help="OpenAI-compatible server under test (default: the orchestrator's HTTP base)")
    group.addoption("--openai-model", metavar="NAME", default=None,
                    help="model name to use against --openai-target")
    group.addoption("--profile", metavar="P", action="append", default=[],
                    help="conformance profile(s) to run (repeatable or comma separated; default all)")
    group.addoption("--report-dir", metavar="DIR", default=None,
                    help="where suites write artifacts (pacts, transcripts)")
    group.addoption("--known-failing", metavar="FILE", default=None,
                    help="known-failing patterns (used by `llorch conform`; recorded here for reports)")
    group.addoption("--token-env", metavar="VAR", default=None,
                    help="environment variable holding the bearer token for the target")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "req(*ids): requirement IDs (specs/) this test checks; it must fail if one is broken")
    path = config.getoption("--llorch-results", default=None)
    if path:
        from llorch.harness.results import ResultsRecorder

        config.pluginmanager.register(ResultsRecorder(config, path), "llorch-results")
    config.stash[_STATE] = _State(config)


# ---- profiles -------------------------------------------------------------------------------


def selected_profiles(config: pytest.Config) -> set[str]:
    raw: list[str] = config.getoption("--profile", default=[]) or []
    return {p.strip() for item in raw for p in item.split(",") if p.strip()}


@dataclass(frozen=True)
class RequirementInfo:
    profile: str
    level: str  # must | should | may


_LEVELS = (("MUST NOT", "must"), ("SHALL NOT", "must"), ("SHOULD NOT", "should"), ("MUST", "must"),
           ("SHALL", "must"), ("REQUIRED", "must"), ("SHOULD", "should"), ("RECOMMENDED", "should"),
           ("MAY", "may"), ("OPTIONAL", "may"))


def _level_of(text: str) -> str:
    for word, level in _LEVELS:
        if re.search(rf"\b{word}\b", text):
            return level
    return "must"


def requirement_index() -> dict[str, RequirementInfo]:
    """ID → profile and level, from the requirement maps (``requirements/*.yaml``), then the specs."""
    from llorch import resources

    out: dict[str, RequirementInfo] = {}
    try:
        req_dir: Path | None = resources.requirements_dir()
    except RuntimeError:
        req_dir = None
    if req_dir is not None:
        import yaml

        for path in sorted(req_dir.glob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                continue
            _collect(data, out)
    try:  # the specs fill in what the maps lack (maps not yet regenerated after a spec edit)
        spec_dir = resources.specs_dir()
    except RuntimeError:
        return out
    line = re.compile(r"^\s*-\s*\[([A-Z]{2,5}-\d{4})\]\s*\{([a-z-]+)\}(.*)$")
    for path in sorted(spec_dir.glob("*.md")):
        for text in path.read_text(encoding="utf-8").splitlines():
            m = line.match(text)
            if m and m.group(1) not in out:
                out[m.group(1)] = RequirementInfo(m.group(2), _level_of(m.group(3)))
    return out


def requirement_profiles() -> dict[str, str]:
    return {rid: info.profile for rid, info in requirement_index().items()}


def _collect(node: Any, out: dict[str, RequirementInfo]) -> None:
    """Walk a map file for records with an ID and a profile, whatever its exact nesting."""
    if isinstance(node, dict):
        rid = node.get("id")
        prof = node.get("profile")
        if isinstance(rid, str) and REQ_ID.fullmatch(rid) and isinstance(prof, str):
            level = node.get("level")
            out[rid] = RequirementInfo(prof, level if isinstance(level, str) else
                                       _level_of(str(node.get("text", ""))))
        for value in node.values():
            _collect(value, out)
    elif isinstance(node, list):
        for item in node:
            _collect(item, out)


def item_reqs(item: pytest.Item) -> list[str]:
    """The requirement IDs a test cites (all ``req`` markers, BDD tags included), in order, unique."""
    seen: dict[str, None] = {}
    for mark in item.iter_markers("req"):
        for rid in mark.args:
            seen[str(rid)] = None
    return list(seen)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = selected_profiles(config)
    if not wanted:
        return
    profiles = requirement_profiles()
    if not profiles:
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        reqs = item_reqs(item)
        known = [profiles[r] for r in reqs if r in profiles]
        if known and not any(p in wanted for p in known):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_bdd_apply_tag(tag: str, function: Any) -> bool | None:
    """``@QUE-1003`` on a scenario becomes ``@pytest.mark.req("QUE-1003")`` (D7)."""
    if REQ_ID.fullmatch(tag):
        pytest.mark.req(tag)(function)
        return True
    return None


# ---- targets --------------------------------------------------------------------------------


@dataclass
class OrchestratorTarget:
    """Where the orchestrator under test answers, and what it says about itself."""

    grpc: str | None
    http: str | None
    embedded: bool
    capabilities: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        models = self.capabilities.get("models") or []
        if models:
            return str(models[0])
        pools = self.capabilities.get("pools") or []
        return str(pools[0].get("model", "")) if pools else ""


@dataclass
class AdapterTarget:
    grpc: str
    embedded: bool


_STATE = pytest.StashKey["_State"]()


class _State:
    """Per-session targets, started lazily and stopped at unconfigure."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.processes: list[Any] = []
        self.orchestrator: OrchestratorTarget | None = None
        self.adapter: AdapterTarget | None = None

    def token(self) -> str | None:
        var = self.config.getoption("--token-env", default=None)
        if not var:
            return None
        value = os.environ.get(var)
        if not value:
            raise pytest.UsageError(f"--token-env {var}: the variable is not set")
        return value

    def get_orchestrator(self) -> OrchestratorTarget:
        if self.orchestrator is None:
            from . import targets

            target = self.config.getoption("--target", default=None)
            http = self.config.getoption("--target-http", default=None)
            if target or http:
                self.orchestrator = OrchestratorTarget(
                    targets.grpc_address(target) if target else None,
                    targets.http_base(http) if http else None, embedded=False)
            else:
                served = targets.start_reference()
                self.processes.append(served)
                self.orchestrator = OrchestratorTarget(
                    targets.grpc_address(served.info["grpc"]), targets.http_base(served.info["http"]),
                    embedded=True)
            self.orchestrator.capabilities = self._capabilities(self.orchestrator)
            self._publish(orchestrator_summary(self.orchestrator))
        return self.orchestrator

    def _capabilities(self, target: OrchestratorTarget) -> dict[str, Any]:
        token = self.token()
        if target.http:
            import httpx

            headers = {"Authorization": f"Bearer {token}"} if token else {}
            resp = httpx.get(target.http + "/v1/capabilities", headers=headers, timeout=10)
            resp.raise_for_status()
            caps: dict[str, Any] = resp.json()
            return caps
        if target.grpc:
            import grpc

            from llorch.proto import orchestrator_pb2

            from .clients import message_json, orchestrator_stub

            md = (("authorization", f"Bearer {token}"),) if token else ()
            with grpc.insecure_channel(target.grpc) as channel:
                msg = orchestrator_stub(channel).GetCapabilities(
                    orchestrator_pb2.GetCapabilitiesRequest(), metadata=md, timeout=10)
            return message_json(msg)
        return {}

    def get_adapter(self) -> AdapterTarget:
        if self.adapter is None:
            from . import targets

            target = self.config.getoption("--adapter-target", default=None)
            if target:
                self.adapter = AdapterTarget(targets.grpc_address(target), embedded=False)
            else:
                served = targets.start_adapter()
                self.processes.append(served)
                self.adapter = AdapterTarget(targets.grpc_address(served.info["grpc"]), embedded=True)
            self._publish(adapter_summary(self.adapter.grpc))
        return self.adapter

    def _publish(self, info: dict[str, Any]) -> None:
        """Hand the target's identity to the results recorder (environment.target)."""
        from llorch.harness.results import TARGET_INFO

        self.config.stash.setdefault(TARGET_INFO, {}).update(info)

    def stop(self) -> None:
        while self.processes:
            self.processes.pop().stop()


def orchestrator_summary(target: OrchestratorTarget) -> dict[str, Any]:
    """kind, address, engine and engine version of an orchestrator, from its capabilities."""
    engines: list[str] = []
    versions: list[str] = []
    for pool in target.capabilities.get("pools") or []:
        for rep in pool.get("replicas") or []:
            if rep.get("engine") and rep["engine"] not in engines:
                engines.append(str(rep["engine"]))
            if rep.get("engine_version") and rep["engine_version"] not in versions:
                versions.append(str(rep["engine_version"]))
        if pool.get("engine") and pool["engine"] not in engines:
            engines.append(str(pool["engine"]))
    return {"kind": "orchestrator", "address": f"grpc://{target.grpc}" if target.grpc else target.http,
            "http": target.http, "engine": ",".join(engines) or None,
            "engine_version": ",".join(versions) or None,
            "server_version": target.capabilities.get("server_version")}


def adapter_summary(address: str) -> dict[str, Any]:
    """kind, address, engine, engine version and model digest of an adapter, from GetEngineInfo."""
    import grpc

    from llorch.proto import worker_adapter_pb2

    from .clients import adapter_stub

    info: dict[str, Any] = {"kind": "adapter", "address": f"grpc://{address}"}
    try:
        with grpc.insecure_channel(address) as channel:
            ei = adapter_stub(channel).GetEngineInfo(worker_adapter_pb2.EngineInfoRequest(), timeout=10)
    except grpc.RpcError as exc:
        info["engine_info_error"] = str(exc.code())
        return info
    info.update(engine=ei.engine, engine_version=ei.engine_version, model=ei.model,
                model_digest=ei.model_digest, is_mock=ei.is_mock)
    return info


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        state.stop()


def _state(request: pytest.FixtureRequest) -> _State:
    return request.config.stash[_STATE]


def _setup_error(exc: Exception) -> None:
    pytest.fail(f"target setup failed: {exc}", pytrace=False)


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def llorch_token(request: pytest.FixtureRequest) -> str | None:
    """The bearer token from ``--token-env VAR`` (never from the command line), or None."""
    return _state(request).token()


@pytest.fixture(scope="session")
def orchestrator(request: pytest.FixtureRequest) -> OrchestratorTarget:
    """The orchestrator under test: addresses and capabilities (embedded reference by default)."""
    from .targets import TargetError

    try:
        return _state(request).get_orchestrator()
    except (TargetError, OSError) as exc:
        _setup_error(exc)
        raise


@pytest.fixture(scope="session")
def http(orchestrator: OrchestratorTarget, llorch_token: str | None) -> Iterator[Any]:
    """An httpx.Client on the orchestrator's HTTP base."""
    import httpx

    if not orchestrator.http:
        pytest.skip("the target has no HTTP address (pass --target-http)")
    headers = {"Authorization": f"Bearer {llorch_token}"} if llorch_token else {}
    with httpx.Client(base_url=orchestrator.http, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def grpc_channel(orchestrator: OrchestratorTarget) -> Iterator[Any]:
    import grpc

    if not orchestrator.grpc:
        pytest.skip("the target has no gRPC address (pass --target)")
    with grpc.insecure_channel(orchestrator.grpc) as channel:
        yield channel


@pytest.fixture(scope="session")
def grpc_stub(grpc_channel: Any) -> Any:
    """An ``OrchestratorServiceStub`` on the target."""
    from .clients import orchestrator_stub

    return orchestrator_stub(grpc_channel)


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test: isolates its tasks, sessions and listings (D13)."""
    from .clients import new_tenant

    return new_tenant()


@pytest.fixture
def api(request: pytest.FixtureRequest, orchestrator: OrchestratorTarget, tenant: str,
        llorch_token: str | None) -> Any:
    """A ``TenantClient``: HTTP and gRPC to the orchestrator, bound to this test's tenant."""
    from .clients import TenantClient

    http_client = request.getfixturevalue("http") if orchestrator.http else None
    stub = request.getfixturevalue("grpc_stub") if orchestrator.grpc else None
    return TenantClient(http_client, stub, tenant, llorch_token, orchestrator.model)


@pytest.fixture(scope="session")
def adapter(request: pytest.FixtureRequest) -> AdapterTarget:
    """The worker adapter under test (``llorch adapter serve`` by default)."""
    from .targets import TargetError

    try:
        return _state(request).get_adapter()
    except (TargetError, OSError) as exc:
        _setup_error(exc)
        raise


@pytest.fixture(scope="session")
def adapter_channel(adapter: AdapterTarget) -> Iterator[Any]:
    import grpc

    with grpc.insecure_channel(adapter.grpc) as channel:
        yield channel


@pytest.fixture(scope="session")
def adapter_stub(adapter_channel: Any) -> Any:
    """A ``WorkerAdapterStub`` on the adapter under test."""
    from .clients import adapter_stub as make

    return make(adapter_channel)


@pytest.fixture(scope="session")
def openai_options(request: pytest.FixtureRequest) -> dict[str, str | None]:
    """``--openai-target`` / ``--openai-model`` for the OpenAI suite's own ``openai_target`` fixture."""
    return {"target": request.config.getoption("--openai-target", default=None),
            "model": request.config.getoption("--openai-model", default=None)}


@pytest.fixture(scope="session")
def embedded_http_base(orchestrator: OrchestratorTarget) -> str:
    """The orchestrator's HTTP base (the embedded reference's unless --target-http is given)."""
    if not orchestrator.http:
        pytest.skip("the target has no HTTP address")
    return orchestrator.http


@pytest.fixture(scope="session")
def report_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where suites put artifacts: ``--report-dir`` or a session temp dir."""
    raw = request.config.getoption("--report-dir", default=None)
    path = Path(raw) if raw else tmp_path_factory.mktemp("llorch-report")
    path.mkdir(parents=True, exist_ok=True)
    return path
