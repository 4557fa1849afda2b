"""The gateway's OpenAPI document, built without starting anything (``llorch contracts regen``
freezes it into ``contracts/openapi/openapi.json``)."""

from __future__ import annotations

from typing import Any, NoReturn, cast

from llorch.reference.runtime.api import OrchestratorApi


class _NotServing:
    """Stands in for the orchestrator while only the schema is built; any call is a bug."""

    def __getattr__(self, name: str) -> NoReturn:
        raise RuntimeError(f"openapi_document() built an app that is not serving (called {name})")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP gateway, as the running gateway serves it at
    ``GET /openapi.json`` (CTR-1020)."""
    from llorch.reference.server.http.app import create_app

    return create_app(cast(OrchestratorApi, _NotServing())).openapi()


def without_validation_errors(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's document with its 422 entries removed: invalid requests are answered 400 in the
    error envelope, never 422 (ERR-1023)."""
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict):
                operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


__all__ = ["openapi_document", "without_validation_errors"]
