"""llama-cpp-python in-process: one ``llama_cpp.Llama`` per replica, one slot.

The engine of the real-model E2E and determinism runs in ``verify`` (D18): no compile of a native
server, no HTTP hop — ``llorch adapter serve`` hosts this adapter behind the ``WorkerAdapter``
gRPC service. Generation is blocking C code, so it runs in a worker thread that hands each token to
the event loop as it is produced; a cancel (or the consumer stopping) sets a flag the thread checks
between tokens, and the slot is free again once the thread has actually stopped.

Determinism (D19, measured in FACTS.md and docs/determinism.md): ``Llama`` keeps the evaluated
tokens and re-uses the longest common prefix of the next prompt, which evaluates the prompt in
other batch splits and moves the logits — the same seeded request then gives other text after
other requests. ``reset()`` before every generation removes that history dependence;
``reset_per_request=False`` keeps the prompt cache (faster on shared prefixes, not deterministic).

``llama_cpp`` is an optional dependency: importing this module works without it, and building an
adapter raises a clear ``Unavailable`` naming the missing package.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from llorch.reference.adapters.http_engine import check_request, file_digest
from llorch.reference.errors import EngineFailure, ErrorCode, LlorchError, Unavailable

__all__ = ["ENGINE", "InProcessLlamaAdapter", "InProcessSettings", "load_llama_cpp"]

ENGINE = "llama-cpp-python"


def load_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or Unavailable saying how to get it (it compiles for minutes)."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError as exc:
        raise Unavailable(
            "the in-process engine needs llama-cpp-python: build it once with ci/engines.sh "
            "(CMAKE_ARGS=-DGGML_NATIVE=OFF, wheel cached in ~/.cache/llorch/wheels) and install it "
            f"with --find-links ({exc})", code=ErrorCode.POOL_UNREADY) from exc


@dataclass(frozen=True, slots=True)
class InProcessSettings:
    model: str  # the orchestrator's model id
    model_path: str  # the GGUF file
    n_ctx: int = 2048
    n_threads: int | None = None
    n_batch: int = 512
    seed: int = 0  # the engine's default seed, for requests that name none
    reset_per_request: bool = True  # False keeps the prompt cache: not deterministic (D19)
    max_tokens_limit: int = 2048


_DONE = object()


class InProcessLlamaAdapter:
    """One replica: a ``Llama`` object, one generation at a time."""

    def __init__(self, settings: InProcessSettings, *, llama: Any = None) -> None:
        self.settings = settings
        self._lib = load_llama_cpp()
        if not Path(settings.model_path).is_file():
            raise Unavailable(f"model file not found: {settings.model_path}", code=ErrorCode.POOL_UNREADY)
        self._llm = llama if llama is not None else self._lib.Llama(
            model_path=settings.model_path, n_ctx=settings.n_ctx, n_threads=settings.n_threads,
            n_batch=settings.n_batch, seed=settings.seed, verbose=False)
        self._running: dict[str, threading.Event] = {}
        self._closed = False
        self._digest = file_digest(settings.model_path)

    @property
    def deterministic(self) -> bool:
        return self.settings.reset_per_request

    async def health(self) -> Health:
        return Health(ready=not self._closed, detail="closed" if self._closed else "ok")

    async def props(self) -> Props:
        return Props(total_slots=1, free_slots=1 - len(self._running), model=self.settings.model,
                     ctx_size=self.settings.n_ctx, max_tokens_limit=self.settings.max_tokens_limit)

    async def engine_info(self) -> EngineInfo:
        system = self._lib.llama_print_system_info()
        features = system.decode() if isinstance(system, bytes) else str(system)
        # req: ADP-1039, ADP-1010
        return EngineInfo(engine=ENGINE, engine_version=str(self._lib.__version__),
                          model=self.settings.model, model_digest=self._digest,
                          build_info=f"llama-cpp-python {self._lib.__version__}; {features.strip()}; "
                                     f"reset_per_request={self.settings.reset_per_request}",
                          deterministic=self.deterministic, is_mock=False)

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenEvent]:
        if self._closed:
            raise Unavailable("in-process engine closed", code=ErrorCode.POOL_UNREADY)
        check_request(ENGINE, request, model=self.settings.model,
                      max_tokens_limit=self.settings.max_tokens_limit,
                      deterministic=self.deterministic, slots=1, running=self._running)
        flag = threading.Event()
        self._running[request.request_id] = flag
        return self._run(request, flag)

    def _work(self, request: GenerateRequest, flag: threading.Event, loop: asyncio.AbstractEventLoop,
              queue: asyncio.Queue[object]) -> None:
        """The worker thread: tokens go to the loop one by one as the engine produces them."""
        def put(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            llm = self._llm
            if self.settings.reset_per_request:
                llm.reset()  # req: DET-1008
            n_prompt = len(llm.tokenize(request.prompt.encode("utf-8"), add_bos=True))
            put(GenStarted(prompt_tokens=n_prompt))
            s = request.sampler
            # req: ADP-1034
            chunks = llm.create_completion(
                request.prompt, max_tokens=request.max_tokens, temperature=s.temperature, top_p=s.top_p,
                top_k=s.top_k, min_p=0.0, typical_p=1.0, repeat_penalty=s.repeat_penalty,
                presence_penalty=0.0, frequency_penalty=0.0, stop=list(s.stop), stream=True,
                seed=self.settings.seed if s.seed is None else s.seed)
            try:
                for chunk in chunks:
                    if flag.is_set():
                        break
                    put(chunk["choices"][0])
            finally:
                chunks.close()
        except Exception as exc:  # the engine's failure, reported in-stream
            put(EngineFailure(f"llama-cpp-python failed: {exc!r}", code=ErrorCode.ENGINE_ERROR))
        finally:
            put(_DONE)

    async def _run(self, request: GenerateRequest, flag: threading.Event) -> AsyncIterator[GenEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        worker: asyncio.Future[None] = loop.run_in_executor(
            None, self._work, request, flag, loop, queue)
        prompt_tokens = 0
        emitted = 0
        try:
            while True:
                item = await queue.get()
                if flag.is_set():  # req: ADP-1026
                    return
                if item is _DONE:
                    raise EngineFailure("llama-cpp-python ended without a finish reason",
                                        code=ErrorCode.WORKER_RESET)
                if isinstance(item, LlorchError):
                    raise item
                if isinstance(item, GenStarted):
                    prompt_tokens = item.prompt_tokens
                    yield item
                    continue
                assert isinstance(item, dict)
                text, finish = item.get("text", ""), item.get("finish_reason")
                if text and emitted < request.max_tokens:
                    yield GenToken(index=emitted, text=text)
                    emitted += 1
                if finish is not None:
                    reason = "length" if finish == "length" or emitted >= request.max_tokens else "stop"
                    await worker
                    self._running.pop(request.request_id, None)  # free once the end is seen (ADP-1003)
                    yield GenEnd(prompt_tokens=prompt_tokens, tokens_out=emitted, finish_reason=reason)
                    return
        finally:
            flag.set()  # the thread stops at its next token; the slot frees when it has
            if worker.done():
                self._running.pop(request.request_id, None)
            else:
                worker.add_done_callback(lambda _: self._running.pop(request.request_id, None))

    async def cancel(self, request_id: str) -> bool:
        flag = self._running.get(request_id)
        if flag is None:
            return False
        flag.set()
        return True

    async def aclose(self) -> None:
        self._closed = True
        for flag in self._running.values():
            flag.set()
        with contextlib.suppress(Exception):
            self._llm.close()
