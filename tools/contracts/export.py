"""Contracts exported from code (DECISIONS D11): the HTTP gateway's OpenAPI document and the
JSON Schema of the configuration. Each comes from one function of the reference; this module
only imports it, renders it deterministically and validates it.

An exporter whose function does not exist yet is *unavailable*, never faked: regeneration
reports it as skipped, and the drift check fails only if a committed file exists that can no
longer be reproduced.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from openapi_spec_validator import validate as validate_openapi_spec
from openapi_spec_validator.exceptions import OpenAPIError
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError


class ValidationFailed(Exception):
    """An exported document is not a valid OpenAPI document / JSON Schema."""


def render_json(document: Any) -> str:
    """The committed form: sorted keys, two-space indent, UTF-8 text, one trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# req: CTR-1004
def validate_openapi(document: dict[str, Any]) -> None:
    try:
        validate_openapi_spec(document)  # type: ignore[arg-type]
    except (OpenAPIValidationError, OpenAPIError) as exc:
        raise ValidationFailed(f"invalid OpenAPI document: {exc}") from exc


def validate_json_schema(document: dict[str, Any]) -> None:
    """Check the schema against the metaschema its ``$schema`` names (latest draft if none)."""
    try:
        validator_for(document).check_schema(document)
    except SchemaError as exc:
        raise ValidationFailed(f"invalid JSON Schema: {exc.message}") from exc


@dataclass(frozen=True)
class Exporter:
    name: str
    path: str  # relative to the checkout root
    target: str  # "module:function" returning the document as a dict
    missing: str  # reason shown while the target cannot be imported
    validate: Callable[[dict[str, Any]], None]

    def load(self) -> dict[str, Any] | str:
        """The document, or the reason it is unavailable (module or function not there yet)."""
        module_name, attr = self.target.split(":")
        try:
            function = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            return f"{self.missing} ({type(exc).__name__}: {exc})"
        document = function()
        if not isinstance(document, dict):
            raise ValidationFailed(f"{self.target} returned {type(document).__name__}, not a dict")
        return document


EXPORTERS = (
    Exporter("openapi", "contracts/openapi/openapi.json",
             "llorch.reference.server.http:openapi_document",
             "gateway not importable yet", validate_openapi),
    Exporter("config-schema", "contracts/config-schema/config.schema.json",
             "llorch.reference.config:config_json_schema",
             "config models not importable yet", validate_json_schema),
)
