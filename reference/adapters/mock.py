"""The deterministic mock engine: an ordinary adapter, like httpx's ``MockTransport``.

The token stream is a pure function of (model id, engine version, prompt, seed, sampler params):
token *i* is drawn from a fixed vocabulary by a keyed hash of those inputs and *i*, so the same
request gives byte-identical streams on every replica, in every process, whatever ran before, and
a shorter ``max_tokens`` gives a prefix of a longer one. Greedy sampling (temperature 0) ignores
the seed, as real engines do.

Pacing uses a ``Clock`` so tests can drive time by hand (``ManualClock``) instead of sleeping;
tokens are scheduled at absolute times (``ttft_ms`` then one every ``1/tokens_per_s``), so a
late consumer gets a burst rather than a drift. It also records what the orchestrator did to it
(requests seen, cancels received): the sideband a test checks, as connectrpc's reference server does.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from llorch.reference.adapters.base import (
    EngineInfo,
    GenEnd,
    GenerateRequest,
    GenEvent,
    GenStarted,
    GenToken,
    Health,
    Props,
)
from llorch.reference.config import MockEngineConfig
from llorch.reference.core.types import SamplerParams
from llorch.reference.errors import Conflict, EngineFailure, ErrorCode, InvalidParams, NotFound, Unavailable

ENGINE = "mock"

# A small fixed vocabulary; every entry starts with a space so texts concatenate into words.
_WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this "
    "be or has had not but one all two new first can after more their who also been its when "
    "time they into other there only over most some may three such out then many later where "
    "would under before these about could between city state during world river light stone "
    "north south east west cloud water fire glass iron salt paper market garden signal engine"
)
VOCAB: tuple[str, ...] = (*(" " + w for w in _WORDS.split()), ".", ",", ";", "!", "?", " -")


class Clock(Protocol):
    """Monotonic time in seconds and a way to wait for a moment of it."""

    def now(self) -> float: ...

    async def sleep_until(self, when: float) -> None: ...


class LoopClock:
    """The running event loop's clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, when: float) -> None:
        delay = when - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


class ManualClock:
    """A clock that only moves when ``advance`` is called: deterministic tests, no sleeping."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (when, next(self._ids), fut))
        await fut

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._waiters and self._waiters[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())


def model_digest(model: str, engine_version: str) -> str:
    """The mock's stand-in for an artifact digest: sha256 of the model id and engine version."""
    return "sha256:" + hashlib.sha256(f"{model}\0{engine_version}".encode()).hexdigest()


def prompt_tokens(prompt: str) -> int:
    """A stable token count for a prompt: whitespace-separated words, at least one."""
    return max(1, len(prompt.split()))


def _f32(value: float) -> str:
    """Sampler floats travel as proto ``float`` (32-bit): key on that precision, so a request
    gives the same stream in-process and through ``WorkerAdapter``."""
    # req: ADP-1300
    return repr(struct.unpack("<f", struct.pack("<f", float(value)))[0])


def stream_key(model: str, engine_version: str, prompt: str, sampler: SamplerParams) -> bytes:
    """The hash key the whole stream derives from (the determinism contract, in one place)."""
    # req: ADP-1302
    seed = "" if sampler.temperature == 0 else str(0 if sampler.seed is None else sampler.seed)
    parts = (model, engine_version, prompt, seed, _f32(sampler.temperature), _f32(sampler.top_p),
             str(sampler.top_k), _f32(sampler.repeat_penalty))
    return hashlib.sha256("\0".join(parts).encode()).digest()


def token_at(key: bytes, index: int) -> tuple[int, str]:
    """Token id and text at position ``index`` of the stream keyed by ``key``."""
    # req: ADP-1301
    digest = hashlib.blake2b(struct.pack("<Q", index), key=key[:32], digest_size=8).digest()
    token_id = int.from_bytes(digest, "little") % len(VOCAB)
    return token_id, VOCAB[token_id]


class _StopFilter:
    """Holds back tokens that might begin a stop sequence, so no stop text is ever emitted.

    A match ends the output right before the stop sequence (OAI-1030): whole tokens before it are
    emitted as they are, and a token in which the match begins is emitted cut to the text before it.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held: list[tuple[int, str]] = []  # (token_id, text)
        self._emitted_tail = ""  # last emitted text, long enough to find straddling matches
        self._keep = max((len(s) for s in self._stops), default=1)

    def push(self, token_id: int, text: str) -> tuple[list[tuple[int, str]], bool]:
        """Returns (tokens safe to emit now, stopped)."""
        if not self._stops:
            return [(token_id, text)], False
        self._held.append((token_id, text))
        held_text = "".join(t for _, t in self._held)
        window = self._emitted_tail + held_text
        base = len(self._emitted_tail)
        hits = [i for i in (window.find(s) for s in self._stops) if i >= 0]
        if hits:
            cut = min(hits) - base  # offset of the match within the held text (may be < 0)
            out, pos = [], 0
            for tok_id, tok_text in self._held:
                if pos + len(tok_text) > cut:
                    if cut > pos:  # req: OAI-1030 — the match begins inside this token
                        out.append((tok_id, tok_text[: cut - pos]))
                    break
                out.append((tok_id, tok_text))
                pos += len(tok_text)
            self._held = []
            return out, True
        # Emit every held token that ends before the longest suffix that could still start a stop.
        hold_from = len(window)
        for s in self._stops:
            for k in range(min(len(s) - 1, len(window)), 0, -1):
                if window.endswith(s[:k]):
                    hold_from = min(hold_from, len(window) - k)
                    break
        out, pos = [], base
        while self._held and pos + len(self._held[0][1]) <= hold_from:
            tok = self._held.pop(0)
            out.append(tok)
            pos += len(tok[1])
        if out:
            self._emitted_tail = (self._emitted_tail + "".join(t for _, t in out))[-self._keep:]
        return out, False

    def flush(self) -> list[tuple[int, str]]:
        out, self._held = self._held, []
        return out


class _Generation:
    """The iterator ``generate`` returns: the slot is taken at call time, so closing the iterator
    must free it even when iteration never started (an unstarted async generator skips its
    ``finally``)."""

    __slots__ = ("_gen", "_release")

    def __init__(self, gen: AsyncGenerator[GenEvent, None], release: Callable[[], None]) -> None:
        self._gen = gen
        self._release = release

    def __aiter__(self) -> _Generation:
        return self

    async def __anext__(self) -> GenEvent:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            self._release()


@dataclass
class MockStats:
    """What the orchestrator did to this engine, for tests to check (the sideband)."""

    requests: list[GenerateRequest] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    completed: int = 0
    cancelled: int = 0
    failed: int = 0


class MockAdapter:
    """One deterministic mock replica with ``slots`` concurrent generations."""

    def __init__(self, model: str, config: MockEngineConfig | None = None, *, slots: int = 1,
                 clock: Clock | None = None, replica_id: str = "mock") -> None:
        self.model = model
        self.config = config or MockEngineConfig()
        self.slots = slots
        self.replica_id = replica_id
        self.clock: Clock = clock or LoopClock()
        self.ready = True  # tests flip it to simulate an unhealthy engine
        self.stats = MockStats()
        self._running: dict[str, asyncio.Event] = {}  # request_id -> cancel flag
        self._closed = False

    # -- introspection -------------------------------------------------------------------------

    async def health(self) -> Health:
        if self._closed:
            return Health(ready=False, detail="closed")
        loadable = self.config.loadable_models
        if loadable and self.model not in loadable:
            return Health(ready=False, detail=f"model {self.model!r} is not available on this engine")
        return Health(ready=self.ready, detail="ok" if self.ready else "marked unready")

    async def props(self) -> Props:
        return Props(total_slots=self.slots, free_slots=self.slots - len(self._running),
                     model=self.model, ctx_size=self.config.ctx_size,
                     max_tokens_limit=self.config.max_tokens_limit)

    async def engine_info(self) -> EngineInfo:
        return EngineInfo(engine=ENGINE, engine_version=self.config.engine_version, model=self.model,
                          model_digest=model_digest(self.model, self.config.engine_version),
                          build_info=f"llorch-mock replica={self.replica_id}", deterministic=True,
                          is_mock=True)

    @property
    def running(self) -> int:
        return len(self._running)

    # -- generation ----------------------------------------------------------------------------

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenEvent]:
        # Checks happen at call time so a refused request raises before iteration starts,
        # and a bad request changes nothing (ADP-1025).
        # req: ADP-1022
        limit = self.config.max_tokens_limit
        if not request.request_id or not request.prompt or not 1 <= request.max_tokens <= limit:
            raise InvalidParams(f"generate needs a request_id, a prompt and 1 <= max_tokens <= {limit}")
        if self._closed or not self.ready:
            raise Unavailable(f"mock replica {self.replica_id} is not ready", code=ErrorCode.POOL_UNREADY)
        if request.model != self.model:
            raise NotFound(f"mock replica {self.replica_id} serves {self.model!r}, not {request.model!r}",
                           code=ErrorCode.MODEL_NOT_FOUND)
        if request.request_id in self._running:  # req: ADP-1024
            raise Conflict(f"request {request.request_id} is already running")
        if len(self._running) >= self.slots:  # req: ADP-1005
            raise Unavailable(f"mock replica {self.replica_id}: all {self.slots} slots busy",
                              code=ErrorCode.REPLICA_EXHAUSTED)
        flag = asyncio.Event()
        self._running[request.request_id] = flag
        self.stats.requests.append(request)
        return _Generation(self._run(request, flag), lambda: self._release(request.request_id, flag))

    def _release(self, request_id: str, flag: asyncio.Event) -> None:
        """Free the slot of a generation closed before it ever ran (its ``finally`` never ran)."""
        if self._running.get(request_id) is flag:
            del self._running[request_id]
            self.stats.cancelled += 1

    async def _run(self, request: GenerateRequest, flag: asyncio.Event) -> AsyncGenerator[GenEvent, None]:
        cfg = self.config
        outcome = "cancelled"
        try:
            n_in = prompt_tokens(request.prompt)
            # req: ADP-1032
            key = stream_key(request.model, cfg.engine_version, request.prompt, request.sampler)
            start = self.clock.now()
            yield GenStarted(prompt_tokens=n_in)
            interval = 0.0 if cfg.tokens_per_s == 0 else 1.0 / cfg.tokens_per_s
            first_at = start + cfg.ttft_ms / 1000.0
            stop = _StopFilter(request.sampler.stop)
            emitted = 0
            produced = 0
            finish = "length"
            while emitted < request.max_tokens:
                if cfg.fail_after is not None and produced >= cfg.fail_after:
                    outcome = "failed"
                    raise EngineFailure(f"mock failure injected after {produced} tokens",
                                        code=ErrorCode(cfg.fail_code))
                await self.clock.sleep_until(first_at + produced * interval)
                if flag.is_set():
                    return
                token_id, text = token_at(key, produced)
                produced += 1
                ready, stopped = stop.push(token_id, text)
                for tid, t in ready[: request.max_tokens - emitted]:
                    yield GenToken(index=emitted, text=t, token_id=tid)
                    emitted += 1
                    if flag.is_set():  # req: ADP-1026
                        return
                if stopped:
                    finish = "stop"
                    break
                if interval == 0 and produced % 64 == 0:
                    await asyncio.sleep(0)  # stay fair to other tasks at unlimited speed
            if emitted == request.max_tokens:
                finish = "length"  # a stop that lands exactly on the limit still reads as length
            outcome = "completed"
            yield GenEnd(prompt_tokens=n_in, tokens_out=emitted, finish_reason=finish)
        finally:
            self._running.pop(request.request_id, None)
            if outcome == "completed":
                self.stats.completed += 1
            elif outcome == "failed":
                self.stats.failed += 1
            else:
                self.stats.cancelled += 1

    async def cancel(self, request_id: str) -> bool:
        """Flags the generation; its iterator returns before yielding another token."""
        self.stats.cancels.append(request_id)
        flag = self._running.get(request_id)
        if flag is None:
            return False
        flag.set()
        return True

    async def aclose(self) -> None:
        self._closed = True
        for flag in self._running.values():
            flag.set()


__all__ = ["ENGINE", "VOCAB", "Clock", "LoopClock", "ManualClock", "MockAdapter", "MockStats",
           "model_digest", "prompt_tokens", "stream_key", "token_at"]
