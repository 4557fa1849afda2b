"""An adapter that drives a remote engine through the ``llorch.v1.WorkerAdapter`` gRPC service.

gRPC failures are translated here, at the one seam (STYLE.md §1): a status carrying an
``ErrorDetail`` becomes the matching ``LlorchError``; a bare status is mapped by its code (a lost
connection is ``WORKER_RESET``, a timeout ``DECODE_TIMEOUT``). Closing the ``generate`` iterator,
or cancelling the task consuming it, cancels the call, which cancels the generation on the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.rpc import status_pb2
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
from llorch.reference.errors import (
    Conflict,
    EngineFailure,
    ErrorCode,
    ErrorInfo,
    InvalidParams,
    LlorchError,
    NotFound,
    Unavailable,
)
from llorch.reference.server.grpc.convert import error_info_from_pb

from llorch.proto import common_pb2 as _common
from llorch.proto import worker_adapter_pb2 as _pb
from llorch.proto import worker_adapter_pb2_grpc as _pb_grpc

_DETAILS_KEY = "grpc-status-details-bin"


def error_from_info(info: ErrorInfo) -> LlorchError:
    """The exception class of the error tree that carries ``info.code``."""
    for cls in LlorchError.__subclasses__():
        if info.code in cls.codes:
            return cls(info.message, code=info.code, retriable=info.retriable,
                       retry_after_ms=info.retry_after_ms, policy_label=info.policy_label)
    return EngineFailure(info.message)


def _detail_of(exc: grpc.aio.AioRpcError) -> ErrorInfo | None:
    for key, value in exc.trailing_metadata() or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for any_msg in status.details:
                detail = _common.ErrorDetail()
                if any_msg.Unpack(detail):
                    return error_info_from_pb(detail)
    return None


def error_from_rpc(exc: grpc.aio.AioRpcError, *, streaming: bool = False) -> LlorchError:
    """Map a failed call to the error tree, preferring the server's own ``ErrorDetail``."""
    info = _detail_of(exc)
    if info is not None:
        return error_from_info(info)
    code, text = exc.code(), exc.details() or str(exc.code())
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidParams(f"engine refused the request: {text}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"engine: {text}", code=ErrorCode.MODEL_NOT_FOUND)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return Conflict(f"engine: {text}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Unavailable(f"engine: {text}", code=ErrorCode.REPLICA_EXHAUSTED)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return EngineFailure(f"engine timed out: {text}", code=ErrorCode.DECODE_TIMEOUT)
    if code == grpc.StatusCode.UNAVAILABLE:
        # req: ADP-1036
        if streaming:
            return EngineFailure(f"engine connection lost: {text}", code=ErrorCode.WORKER_RESET)
        return Unavailable(f"engine unavailable: {text}", code=ErrorCode.POOL_UNREADY)
    return EngineFailure(f"engine error ({code.name}): {text}")


class RemoteAdapter:
    """One replica reached over gRPC at ``address`` (``host:port``)."""

    def __init__(self, address: str, *, connect_timeout_s: float = 2.0, call_timeout_s: float = 5.0,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.address = address
        self._connect_timeout = connect_timeout_s
        self._call_timeout = call_timeout_s
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stub_: _pb_grpc.WorkerAdapterStub | None = None
        self._cancelled: set[str] = set()  # request ids cancelled while their stream is open

    def _stub(self) -> _pb_grpc.WorkerAdapterStub:
        # Created lazily: a grpc.aio channel belongs to the event loop that first uses it.
        if self._stub_ is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self.address, self._credentials)
            else:
                self._channel = grpc.aio.insecure_channel(self.address)
            self._stub_ = _pb_grpc.WorkerAdapterStub(self._channel)
        return self._stub_

    async def health(self) -> Health:
        try:
            r = await self._stub().Health(_pb.HealthRequest(), timeout=self._connect_timeout)
        except grpc.aio.AioRpcError as exc:
            return Health(ready=False, detail=f"unreachable: {exc.code().name}: {exc.details()}")
        return Health(ready=r.ready, detail=r.detail)

    async def props(self) -> Props:
        try:
            r = await self._stub().GetProps(_pb.PropsRequest(), timeout=self._call_timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        return Props(total_slots=r.total_slots, free_slots=r.free_slots, model=r.model,
                     ctx_size=r.ctx_size, max_tokens_limit=r.max_tokens_limit)

    async def engine_info(self) -> EngineInfo:
        try:
            r = await self._stub().GetEngineInfo(_pb.EngineInfoRequest(), timeout=self._call_timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        return EngineInfo(engine=r.engine, engine_version=r.engine_version, model=r.model,
                          model_digest=r.model_digest, build_info=r.build_info,
                          deterministic=r.deterministic, is_mock=r.is_mock)

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenEvent]:
        return self._generate(request)

    async def _generate(self, request: GenerateRequest) -> AsyncIterator[GenEvent]:
        s = request.sampler
        sampler = _common.SamplerParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                        repeat_penalty=s.repeat_penalty, stop=list(s.stop))
        if s.seed is not None:
            sampler.seed = s.seed
        call = self._stub().Generate(_pb.GenerateRequest(
            request_id=request.request_id, model=request.model, prompt=request.prompt,
            max_tokens=request.max_tokens, sampler=sampler, deterministic=request.deterministic,
            accept_token_batches=True))  # req: ADP-1360
        rid = request.request_id
        try:
            async for ev in call:
                if rid in self._cancelled:
                    return  # tokens already in flight when the cancel was answered are dropped
                kind = ev.WhichOneof("kind")
                if kind == "tokens":  # several tokens that were ready together: one event each
                    for t in ev.tokens.tokens:
                        if rid in self._cancelled:
                            return
                        yield GenToken(index=t.index, text=t.text, token_id=t.token_id)
                elif kind == "token":
                    yield GenToken(index=ev.token.index, text=ev.token.text, token_id=ev.token.token_id)
                elif kind == "started":
                    yield GenStarted(prompt_tokens=ev.started.prompt_tokens)
                elif kind == "end":
                    yield GenEnd(prompt_tokens=ev.end.prompt_tokens, tokens_out=ev.end.tokens_out,
                                 finish_reason=ev.end.finish_reason)
                    return
                elif kind == "error":
                    raise error_from_info(error_info_from_pb(ev.error))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return  # cancelled (by us or through the Cancel rpc): the stream just stops
            raise error_from_rpc(exc, streaming=True) from exc
        finally:
            self._cancelled.discard(rid)
            call.cancel()  # closing the stream cancels the generation (no-op once finished)

    async def cancel(self, request_id: str) -> bool:
        """Cancel on the engine; this client yields no further token for the request either."""
        self._cancelled.add(request_id)
        try:
            r = await self._stub().Cancel(_pb.AdapterCancelRequest(request_id=request_id),
                                          timeout=self._call_timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        return bool(r.found)

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub_ = None


__all__ = ["RemoteAdapter", "error_from_info", "error_from_rpc"]
