"""The reference orchestrator's configuration: strict pydantic models.

Strict on purpose (the prior art accepted unknown fields and coerced "3" into 3): every model
forbids unknown keys and refuses type coercion, so a typo in a deployment file is an error at
startup, not a silently ignored setting. ``config_json_schema()`` is what the contracts exporter
freezes into ``contracts/config-schema/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from llorch.reference.errors import InvalidParams
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# req: CFG-1001, CFG-1003
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Port = Annotated[int, Field(ge=0, le=65535)]
Ident = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
FullPolicyName = Literal["reject", "drop-lru", "shed-lower-priority"]
EngineName = Literal["mock", "remote", "llamacpp", "openai", "tgi", "triton", "llama-inprocess"]
"""``mock`` and ``remote`` are configured by their own blocks; the others are the real-engine adapters
of ``adapters/registry.py`` (its ``ENGINES``), configured by ``params``."""
ParamValue = str | int | float | bool
LaunchKind = Literal["llama-cpp-python-server", "command"]
FailCode = Literal["ENGINE_ERROR", "WORKER_RESET", "DECODE_TIMEOUT"]


class Strict(BaseModel):
    model_config = _STRICT


class TlsConfig(Strict):
    """PEM files for gRPC and HTTP; both must be given."""

    cert_file: str = Field(min_length=1)
    """Path of the PEM certificate chain."""
    key_file: str = Field(min_length=1)
    """Path of the PEM private key."""


class ServerConfig(Strict):
    """Where the orchestrator listens."""

    host: str = "127.0.0.1"
    """Bind address; a non-loopback address needs auth tokens configured."""
    grpc_port: Port = 50051
    """gRPC port; 0 picks a free port."""
    http_port: Port = 8700
    """HTTP port; 0 picks a free port."""
    tls: TlsConfig | None = None
    """TLS for both gRPC and HTTP; absent = plaintext."""


class TokenConfig(Strict):
    """One bearer token. The secret itself never sits in the file: either the name of an
    environment variable holding it, or its sha256 hex digest."""

    token_env: str | None = Field(default=None, min_length=1)
    """Environment variable holding the token."""
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Lowercase hex sha256 of the token."""
    tenant: Ident
    """Tenant the token authenticates as."""
    admin: bool = False
    """May drain and reload pools."""

    @model_validator(mode="after")
    def _one_source(self) -> TokenConfig:
        if (self.token_env is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token_env or token_sha256")
        return self


class AuthConfig(Strict):
    """Bearer-token authentication; no tokens = no auth (loopback only)."""

    tokens: list[TokenConfig] = Field(default_factory=list)
    """Accepted tokens."""
    allow_tenant_header: bool = True
    """Without tokens, let a client name its tenant in X-Llorch-Tenant (test isolation)."""

    @property
    def required(self) -> bool:
        return bool(self.tokens)


class LimitsConfig(Strict):
    """Request limits enforced at admission."""

    max_tokens: PositiveInt = 4096
    """Largest max_tokens a request may ask for."""
    max_prompt_bytes: PositiveInt = 65536
    """Largest prompt, in UTF-8 bytes."""
    max_body_bytes: PositiveInt = 1 << 20
    """Largest request body (HTTP) or message (gRPC)."""
    max_stop: NonNegInt = 4
    """Most stop sequences per request."""


class QueueConfig(Strict):
    """The bounded priority queue."""

    capacity: PositiveInt = 1024
    """Most tasks queued at once."""
    full_policy: FullPolicyName = "reject"
    """What a submit to a full queue does."""
    retry_after_ms: NonNegInt = 250
    """Initial overload advice (Retry-After), before the dispatch rate has been observed."""


class StoreConfig(Strict):
    """The SQLite store of tasks, events and usage."""

    path: str = Field(default=":memory:", min_length=1)
    """SQLite file; ":memory:" keeps nothing across restarts."""
    retention_ms: PositiveInt = 7 * 24 * 3600 * 1000
    """Finished tasks older than this may be removed."""


class TenantBudget(Strict):
    """A tenant's token budget and request rate limit."""

    tokens: NonNegInt | None = None
    """Tokens (prompt + output) the tenant may spend per period; absent = unlimited."""
    period_ms: NonNegInt = 0
    """Budget period; 0 = one period for the process lifetime."""
    requests_per_s: Annotated[float, Field(gt=0)] | None = None
    """Sustained submit rate; absent = unlimited."""
    burst: PositiveInt | None = None
    """Submits allowed at once; absent = requests_per_s rounded, at least 1."""


class BudgetsConfig(Strict):
    """Budgets and rate limits per tenant."""

    default: TenantBudget = Field(default_factory=TenantBudget)
    """Applies to every tenant not listed in tenants."""
    tenants: dict[str, TenantBudget] = Field(default_factory=dict)
    """Per-tenant overrides."""

    def for_tenant(self, tenant: str) -> TenantBudget:
        return self.tenants.get(tenant, self.default)


class SessionsConfig(Strict):
    """Defaults for sessions created with 0 values."""

    default_ttl_ms: PositiveInt = 600_000
    """Session lifetime when a create asks for 0."""
    default_max_turns: PositiveInt = 100
    """Turn limit when a create asks for 0."""


class MockEngineConfig(Strict):
    """The deterministic mock engine (adapters/mock.py)."""

    tokens_per_s: Annotated[float, Field(ge=0)] = 200.0
    """Token rate per stream; 0 = as fast as possible."""
    ttft_ms: NonNegInt = 5
    """Delay before the first token."""
    engine_version: str = Field(default="1.0.0", min_length=1)
    """Reported engine version; part of the stream's hash key and the model digest."""
    fail_after: NonNegInt | None = None
    """Fail every generation after this many tokens (failure injection); absent = never."""
    fail_code: FailCode = "ENGINE_ERROR"
    """Error code of an injected failure."""
    ctx_size: PositiveInt = 4096
    """Reported context size."""
    max_tokens_limit: PositiveInt = 65536
    """Largest max_tokens the engine accepts."""
    loadable_models: list[str] = Field(default_factory=list)
    """Models the engine can serve (a reload to another fails its health); empty = any model."""


class RemoteEngineConfig(Strict):
    """A WorkerAdapter gRPC server (llorch adapter serve, or a third party's)."""

    address: str = ""
    """host:port used by replicas that name no address."""
    connect_timeout_ms: PositiveInt = 2000
    """Timeout of health calls to the engine."""


class LaunchConfig(Strict):
    """A local engine process the pool starts and supervises, one per replica (pool/supervisor.py).

    The replica's adapter is the ``openai`` one, pointed at the process's address."""

    # req: POOL-1026, POOL-1029, POOL-1030
    kind: LaunchKind = "llama-cpp-python-server"
    """``llama-cpp-python-server``: ``python -m llama_cpp.server`` serving model_path; ``command``:
    argv, with {host}, {port} and {model_path} replaced, serving the OpenAI completions API."""
    model_path: str = Field(min_length=1)
    """The model file; its sha256 is the replica's model digest."""
    argv: list[str] = Field(default_factory=list)
    """kind command: the engine's command line."""
    health_path: str = Field(default="/v1/models", pattern=r"^/")
    """GET path answering 200 once the engine can serve."""
    n_threads: PositiveInt | None = None
    """kind llama-cpp-python-server: CPU threads; absent = the engine's default."""
    n_ctx: PositiveInt = 2048
    """kind llama-cpp-python-server: context size."""
    start_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """An engine not ready this long after a start is killed and started again (replica unready)."""
    stop_grace_s: Annotated[float, Field(ge=0)] = 5.0
    """On stop, SIGKILL follows SIGTERM after this long."""

    @model_validator(mode="after")
    def _check(self) -> LaunchConfig:
        if (self.kind == "command") != bool(self.argv):
            raise ValueError("launch: argv is required with kind command and refused otherwise")
        return self


class ReplicaConfig(Strict):
    """One replica of a pool."""

    id: Ident
    """Replica id, unique across all pools."""
    address: str = ""
    """Remote engines: host:port of this replica's WorkerAdapter."""


class PoolConfig(Strict):
    """A pool of replicas serving one model with one engine."""

    id: Ident
    """Pool id."""
    model: Ident
    """Model the pool serves."""
    engine: EngineName = "mock"
    """Adapter of the replicas."""
    params: dict[str, ParamValue] = Field(default_factory=dict)
    """Real engines: the adapter's parameters (adapters/registry.py ``build_adapter``); with launch,
    base_url comes from the launched process."""
    launch: LaunchConfig | None = None
    """Start and supervise a local engine process per replica (engine: openai)."""
    replicas: PositiveInt | list[ReplicaConfig] = 1
    """A count (ids <pool>-r0, <pool>-r1, …) or a list of replicas."""
    slots_per_replica: PositiveInt = 1
    """Concurrent tasks per replica (capped by the engine's reported slots)."""
    mock: MockEngineConfig = Field(default_factory=MockEngineConfig)
    """Mock engine parameters (engine: mock)."""
    remote: RemoteEngineConfig = Field(default_factory=RemoteEngineConfig)
    """Remote engine parameters (engine: remote)."""

    @field_validator("engine", mode="before")
    @classmethod
    def _known_engine(cls, value: Any, info: ValidationInfo) -> Any:
        """An unknown engine names the pool (the generic error names only its list index)."""
        if value not in get_args(EngineName):
            raise ValueError(f"pool {info.data.get('id', '?')}: unknown engine {value!r}; "
                             f"known: {list(get_args(EngineName))}")
        return value

    @model_validator(mode="after")
    def _check(self) -> PoolConfig:
        # req: CFG-1004
        if isinstance(self.replicas, list):
            if not self.replicas:
                raise ValueError("replicas: give a count or a non-empty list")
            ids = [r.id for r in self.replicas]
            if len(set(ids)) != len(ids):
                raise ValueError(f"pool {self.id}: duplicate replica ids")
        if self.engine == "remote":
            missing = [r.id for r in self.replica_list() if not r.address]
            if missing:
                raise ValueError(f"pool {self.id}: remote replicas need an address: {missing}")
        if self.params and self.engine in ("mock", "remote"):
            raise ValueError(f"pool {self.id}: params are for real engines, not {self.engine!r}")
        if self.launch is not None:
            if self.engine != "openai":
                raise ValueError(f"pool {self.id}: launch serves the openai engine, not {self.engine!r}")
            if "base_url" in self.params:
                raise ValueError(f"pool {self.id}: with launch, base_url is the launched engine's")
        if "model" in self.params:
            raise ValueError(f"pool {self.id}: params.model: the adapter serves the pool's model")
        return self

    def replica_list(self) -> list[ReplicaConfig]:
        """Replicas as a list; a count N names them ``<pool>-r0`` … ``<pool>-r{N-1}``."""
        if isinstance(self.replicas, list):
            return [r if r.address or self.engine != "remote" else
                    ReplicaConfig(id=r.id, address=self.remote.address) for r in self.replicas]
        return [ReplicaConfig(id=f"{self.id}-r{i}", address=self.remote.address)
                for i in range(self.replicas)]


class ModelConfig(Strict):
    """One catalog entry: what /v1/models lists and what a reload may switch to."""

    id: Ident
    """Model id."""
    owned_by: str = "llorch"
    """Shown by /v1/models."""
    deprecated: bool = False
    """Listed as deprecated."""


class RuntimeConfig(Strict):
    """Timers of the runtime."""

    probe_interval_ms: PositiveInt = 1000
    """Health and props probe period per replica."""
    probe_timeout_ms: PositiveInt = 1000
    """A probe slower than this fails."""
    unhealthy_after: PositiveInt = 1
    """Consecutive failed probes before a replica is reported unready."""
    drain_deadline_ms: NonNegInt = 30_000
    """Drain deadline when a drain asks for 0."""
    cancel_grace_ms: PositiveInt = 2000
    """How long a cancel waits for the engine to stop and free the slot."""
    disconnect_grace_ms: NonNegInt = 1000
    """A running task whose last subscriber left this long ago is cancelled upstream."""
    idempotency_retention_ms: PositiveInt = 600_000
    """How long an idempotency_key maps to its first task."""
    finished_task_cache: NonNegInt = 4096
    """Finished tasks kept in memory for resume before reads fall back to the store."""
    finished_event_cache: NonNegInt = 200_000
    """Most events held in memory over all finished tasks (older tasks are read from the store)."""


DEFAULT_PROFILES = ("core", "streaming", "cancel", "admin", "metrics", "persistence", "budgets",
                    "sessions", "determinism")


class Config(Strict):
    """The reference orchestrator's configuration (llorch serve --config FILE)."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    """Listening addresses and TLS."""
    auth: AuthConfig = Field(default_factory=AuthConfig)
    """Bearer tokens."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """Request limits."""
    queue: QueueConfig = Field(default_factory=QueueConfig)
    """The task queue."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """The SQLite store."""
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    """Token budgets and rate limits."""
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    """Session defaults."""
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    """Runtime timers."""
    pools: list[PoolConfig] = Field(min_length=1)
    """The pools; at least one."""
    models: list[ModelConfig] = Field(default_factory=list)
    """Model catalog; pools' models are added to it."""
    profiles: list[str] = Field(default_factory=lambda: list(DEFAULT_PROFILES))
    """Conformance profiles the deployment claims (capabilities.profiles)."""

    @model_validator(mode="after")
    def _check(self) -> Config:
        ids = [p.id for p in self.pools]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate pool ids")
        all_replicas = [r.id for p in self.pools for r in p.replica_list()]
        if len(set(all_replicas)) != len(all_replicas):
            raise ValueError("replica ids must be unique across pools")
        return self

    def model_ids(self) -> list[str]:
        """The catalog: declared models, then any model a pool serves that is not declared."""
        seen = [m.id for m in self.models]
        for p in self.pools:
            if p.model not in seen:
                seen.append(p.model)
        return seen


def default_config() -> Config:
    """The embedded default of ``llorch serve``: loopback, no auth, one pool of mock replicas."""
    return Config(pools=[PoolConfig(id="default", model="llorch-mock", engine="mock", replicas=2,
                                    slots_per_replica=2)])


def parse_config(data: Any) -> Config:
    """Validate a mapping; errors become ``InvalidParams`` naming every offending field."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise InvalidParams(f"invalid config: {exc}") from exc


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a YAML or JSON file (by extension; YAML otherwise)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise InvalidParams(f"{p}: the config must be a mapping")
    return parse_config(data)


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema exported to ``contracts/config-schema/``."""
    schema = Config.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llorch reference orchestrator config"
    return schema


__all__ = [
    "AuthConfig", "BudgetsConfig", "Config", "LaunchConfig", "LimitsConfig", "MockEngineConfig",
    "ModelConfig", "PoolConfig", "QueueConfig", "RemoteEngineConfig", "ReplicaConfig", "RuntimeConfig",
    "ServerConfig", "SessionsConfig", "StoreConfig", "TenantBudget", "TlsConfig", "TokenConfig",
    "config_json_schema", "default_config", "load_config", "parse_config",
]
