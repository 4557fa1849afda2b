"""gRPC server interceptor: correlation id, authentication/tenant, and error translation.

Wraps every ``llorch.v1.OrchestratorService`` method so that the servicer only translates messages:
the interceptor resolves the caller's ``Identity`` from ``authorization`` (or ``x-llorch-tenant``
without auth), keeps it and the correlation id in ``contextvars`` (``server/context.py``), sends the
correlation id as initial metadata, and turns any ``LlorchError`` into a status carrying a
``llorch.v1.ErrorDetail`` in ``grpc-status-details-bin`` (grpcio-status's wire form).
Standard health and reflection are not intercepted: probes need no token.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2
from llorch.reference.errors import InternalError, LlorchError
from llorch.reference.server import context as ctx
from llorch.reference.server.errors import error_info, wire_status
from llorch.reference.server.grpc.convert import error_detail
from llorch.reference.server.security import TENANT_HEADER, Authenticator

log = logging.getLogger("llorch.server.grpc")

SERVICE_PREFIX = "/llorch.v1.OrchestratorService/"


def _metadata(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for k, v in details.invocation_metadata or ():  # type: ignore[attr-defined]
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


async def abort_with_error(context: grpc.aio.ServicerContext[Any, Any], error: LlorchError,
                           correlation_id: str) -> None:
    """Abort the RPC with the mapped status code and the ErrorDetail in the rich status."""
    # req: ERR-1003
    info = error_info(error, correlation_id)
    code = wire_status(info).grpc
    detail = any_pb2.Any()
    detail.Pack(error_detail(info))
    status = status_pb2.Status(code=code.value[0], message=info.message, details=[detail])
    await context.abort(code, info.message, trailing_metadata=(
        ("grpc-status-details-bin", status.SerializeToString()),
        (ctx.CORRELATION_HEADER, correlation_id)))


class OrchestratorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not method.startswith(SERVICE_PREFIX):
            return handler
        correlation_id = ctx.accept_correlation_id(_metadata(handler_call_details, ctx.CORRELATION_HEADER))
        authorization = _metadata(handler_call_details, "authorization")
        tenant = _metadata(handler_call_details, TENANT_HEADER)
        auth = self._auth

        async def enter(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            ctx.correlation_id.set(correlation_id)
            await context.send_initial_metadata(((ctx.CORRELATION_HEADER, correlation_id),))
            # req: SEC-1002
            ctx.identity.set(auth.identify(authorization, tenant))

        async def fail(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
            if isinstance(exc, LlorchError):
                await abort_with_error(context, exc, correlation_id)
            log.exception("unexpected error in %s (correlation id %s)", method, correlation_id)
            await abort_with_error(context, InternalError("internal error"), correlation_id)

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    await enter(context)
                    return await unary(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await fail(context, exc)

            return grpc.unary_unary_rpc_method_handler(
                unary_behavior, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)

        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def stream_behavior(request: Any,
                                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                try:
                    await enter(context)
                    async for message in stream(request, context):
                        yield message
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await fail(context, exc)

            return grpc.unary_stream_rpc_method_handler(
                stream_behavior, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler
