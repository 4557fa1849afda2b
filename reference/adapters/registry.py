"""Build a real-engine adapter from an engine name and its parameters: the hook the runtime calls.

``build_adapter("llamacpp", {"base_url": …, "model": …})`` → an ``Adapter``. Unknown engines and
unknown or mistyped parameters are ``InvalidParams`` naming them (strict, like ``config.py``), and
the determinism settings of D19 are enforced here, once, for every engine that claims determinism:
one slot per engine process, and for in-process llama-cpp-python a ``reset()`` per request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from llorch.reference.adapters.base import Adapter
from llorch.reference.adapters.http_engine import EngineSettings, HttpEngineAdapter
from llorch.reference.adapters.inprocess_llama import InProcessLlamaAdapter, InProcessSettings
from llorch.reference.adapters.llamacpp import LlamaCppServerAdapter
from llorch.reference.adapters.openai_compat import OpenAICompatAdapter
from llorch.reference.adapters.tgi import TgiAdapter
from llorch.reference.adapters.triton import TritonAdapter
from llorch.reference.errors import InvalidParams

__all__ = ["ENGINES", "build_adapter"]

HTTP_ENGINES: dict[str, type[HttpEngineAdapter]] = {
    "llamacpp": LlamaCppServerAdapter,
    "openai": OpenAICompatAdapter,
    "tgi": TgiAdapter,
    "triton": TritonAdapter,
}
ENGINES = (*HTTP_ENGINES, "llama-inprocess")


_TYPES: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool}


def _settings(cls: Callable[..., Any], engine: str, params: Mapping[str, Any]) -> Any:
    """A settings dataclass from a mapping, refusing unknown keys and wrong value types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise InvalidParams(f"engine {engine!r}: unknown parameters {unknown}; known: {sorted(fields)}")
    for name, value in params.items():
        want = fields[name].type
        ok = _TYPES.get(str(want).split(" |")[0])
        if ok is not None and (not isinstance(value, ok) or (ok is int and isinstance(value, bool))):
            raise InvalidParams(f"engine {engine!r}: parameter {name!r} must be {want}, got {value!r}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise InvalidParams(f"engine {engine!r}: {exc}") from exc


def build_adapter(engine: str, params: Mapping[str, Any]) -> Adapter:
    """The adapter for one replica of ``engine`` configured by ``params``."""
    if engine == "llama-inprocess":
        inproc: InProcessSettings = _settings(InProcessSettings, engine, params)
        return InProcessLlamaAdapter(inproc)
    cls = HTTP_ENGINES.get(engine)
    if cls is None:
        raise InvalidParams(f"unknown engine {engine!r}; known: {list(ENGINES)}")
    settings: EngineSettings = _settings(EngineSettings, engine, params)
    if settings.deterministic and settings.slots != 1:
        # req: DET-1007
        raise InvalidParams(f"engine {engine!r}: a deterministic replica runs one slot per engine "
                            f"process (D19), not {settings.slots}; add replicas for capacity")
    return cls(settings)
