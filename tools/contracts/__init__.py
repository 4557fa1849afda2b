"""Contract tooling (DECISIONS D3, D11): regenerate the generated contract files, fail on drift,
and classify every change against the frozen baseline as compatible or breaking.

Modules: ``protogen`` (proto → ``llorch/proto`` stubs and descriptor sets), ``export`` (OpenAPI and
config JSON Schema exported from code), ``regen`` (all generators, drift check), ``compat``
(descriptor and schema comparison), ``version`` (``contracts/VERSION`` and the bump rule),
``cli`` (``llorch contracts``).
"""


class ContractError(Exception):
    """A setup or usage problem (no checkout, protoc failed, unreadable git ref): exit code 2."""


__all__ = ["ContractError"]
