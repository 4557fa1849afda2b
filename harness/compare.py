"""Stream comparison for determinism checks: where two token streams first differ.

Shared by the adapter suite and the determinism suite (D17). Streams are compared token by token
(texts, and engine token ids where both sides report them); coalesced events are expanded first
only by the caller, since a coalesced text cannot be split without a tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Divergence", "StreamToken", "first_divergence"]


@dataclass(frozen=True, slots=True)
class StreamToken:
    text: str
    token_id: int = -1


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first token index where streams differ; ``left``/``right`` are None past a stream's end."""

    index: int
    left: StreamToken | None
    right: StreamToken | None

    def describe(self) -> str:
        def show(tok: StreamToken | None) -> str:
            return "<end of stream>" if tok is None else f"{tok.text!r} (id {tok.token_id})"

        return f"streams diverge at token {self.index}: {show(self.left)} vs {show(self.right)}"


def _same(a: StreamToken, b: StreamToken) -> bool:
    if a.text != b.text:
        return False
    return a.token_id < 0 or b.token_id < 0 or a.token_id == b.token_id


def first_divergence(left: Sequence[StreamToken], right: Sequence[StreamToken]) -> Divergence | None:
    """None when the streams are identical, else the first index where they differ."""
    for i, (a, b) in enumerate(zip(left, right, strict=False)):
        if not _same(a, b):
            return Divergence(i, a, b)
    if len(left) != len(right):
        n = min(len(left), len(right))
        return Divergence(n, left[n] if n < len(left) else None, right[n] if n < len(right) else None)
    return None
