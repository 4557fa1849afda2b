"""Fixtures of the real-model suite: the embedded real-model target, started once per session, or
a clear skip naming what is missing; ``gpu``-marked tests skip with reason "no GPU" without one."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest
from llorch.harness.e2e.realmodel import RealModelTarget, real_model_unavailable, start_real_model
from llorch.harness.targets import TargetError


def gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return bool(subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gpu_present():
        return
    skip = pytest.mark.skip(reason="no GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_target() -> Iterator[RealModelTarget]:
    reason = real_model_unavailable()
    if reason:
        pytest.skip(f"no real-engine target: {reason}")
    try:
        target = start_real_model(2)
    except TargetError as exc:
        pytest.fail(f"the real-model target did not start: {exc}")
    with target:
        yield target
