"""llorch: spec-driven conformance harness for LLM inference orchestration, with a reference
orchestrator built to pass it. Subpackages: ``llorch.reference``, ``llorch.harness``,
``llorch.tools``; generated gRPC stubs in ``llorch.proto``; the HTTP client in ``llorch.client``.
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# Run from a source checkout (``python -m llorch`` in the repository root puts the root on
# sys.path, so this folder shadows any installed copy), the subpackages live beside this folder,
# not inside it (setup.py maps them, DECISIONS D2): let the import system find them there too.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "setup.py").is_file() and (_checkout / "reference" / "__init__.py").is_file():
    __path__.append(str(_checkout))

try:
    __version__ = version("llorch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
