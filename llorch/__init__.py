"""llorch: spec-driven conformance harness for LLM inference orchestration, with a reference
orchestrator built to pass it. Subpackages: ``llorch.reference``, ``llorch.harness``,
``llorch.tools``; generated gRPC stubs in ``llorch.proto``; the HTTP client in ``llorch.client``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llorch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
