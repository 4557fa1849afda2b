"""Build the ``grpc.aio`` server: the orchestrator service, standard health, reflection, TLS."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from llorch.reference.runtime.api import OrchestratorApi
from llorch.reference.server.grpc.interceptors import OrchestratorInterceptor
from llorch.reference.server.grpc.servicer import OrchestratorServicer
from llorch.reference.server.security import SecuritySettings

from llorch.proto import orchestrator_pb2 as _pb
from llorch.proto import orchestrator_pb2_grpc as _pb_grpc

SERVICE_NAME = _pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name


class GrpcServer:
    """A started-or-not gRPC server plus its health servicer (flipped first on shutdown)."""

    def __init__(self, orchestrator: OrchestratorApi, security: SecuritySettings) -> None:
        # req: SEC-1016
        limit = security.limits.max_body_bytes
        self.server = grpc.aio.server(
            interceptors=[OrchestratorInterceptor(security.authenticator)],
            # No SO_REUSEPORT: a second server on a busy port must fail, not share its traffic.
            options=[("grpc.max_receive_message_length", limit), ("grpc.so_reuseport", 0)])
        _pb_grpc.add_OrchestratorServiceServicer_to_server(
            OrchestratorServicer(orchestrator, security.limits), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self._security = security
        self.port = 0

    def bind(self, host: str, port: int) -> int:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if self._security.tls is not None:
                cert, key = self._security.tls.read()
                credentials = grpc.ssl_server_credentials([(key, cert)])
                self.port = self.server.add_secure_port(address, credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc reports a failed bind as RuntimeError
            raise OSError(f"cannot bind gRPC on {address}: {exc}") from exc
        if self.port == 0:
            raise OSError(f"cannot bind gRPC on {address}")
        return self.port

    async def start(self) -> None:
        await self.server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def enter_shutdown(self) -> None:
        """Probes see NOT_SERVING before the listener goes away."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        await self.server.stop(grace_s)
