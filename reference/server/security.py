"""Authentication, binding rules, request limits and TLS for both edges (gRPC and HTTP).

Bearer tokens are compared in constant time (``hmac.compare_digest`` over sha256 digests) against
every configured token, so the time taken does not reveal which prefix matched. Only a token's
fingerprint (the first 8 hex digits of its sha256) is ever logged or stored. A server that
would listen on a non-loopback address with no token configured refuses to start
(``InsecureBindError``; the CLI exits 2).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llorch.reference.config import Config
from llorch.reference.core.types import Identity
from llorch.reference.errors import ErrorCode, InvalidParams, Unauthenticated

ANONYMOUS = "anonymous"
TENANT_HEADER = "x-llorch-tenant"
_TENANT_MAX = 64


class InsecureBindError(Exception):
    """Refusal to listen on a non-loopback address without authentication (a setup error)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a configured token stands for."""

    tenant: str
    admin: bool = False


def fingerprint(token: str) -> str:
    """The only form of a token that may appear in logs, records or errors."""
    # req: SEC-1011
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Authenticator:
    """Maps an ``Authorization`` header (and, without auth, a tenant header) to an ``Identity``.

    Tokens are kept only as sha256 digests; the presented token's digest is compared in constant
    time with each of them (no early exit), so timing reveals neither which token nor which prefix.
    """

    digests: tuple[tuple[bytes, Principal], ...] = ()
    allow_tenant_header: bool = True

    @classmethod
    def from_tokens(cls, tokens: Iterable[tuple[str, Principal]],
                    allow_tenant_header: bool = True) -> Authenticator:
        return cls(tuple((_digest(token), principal) for token, principal in tokens), allow_tenant_header)

    @property
    def required(self) -> bool:
        return bool(self.digests)

    def identify(self, authorization: str | None, tenant_header: str | None = None) -> Identity:
        """Raise ``Unauthenticated`` for a missing or wrong token when auth is configured."""
        if not self.digests:
            tenant = ANONYMOUS
            if self.allow_tenant_header and tenant_header and tenant_header.strip():
                # Without auth a client may name its tenant so tests can isolate themselves.
                tenant = tenant_header.strip()
                if len(tenant) > _TENANT_MAX or not tenant.isprintable():
                    raise InvalidParams(f"{TENANT_HEADER} must be 1..{_TENANT_MAX} printable characters")
            return Identity(tenant=tenant, token_fingerprint="", admin=True)
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
        presented = _digest(token)
        match: Principal | None = None
        for known, principal in self.digests:
            # req: SEC-1005
            if hmac.compare_digest(known, presented):
                match = principal
        if match is None:
            raise Unauthenticated("invalid bearer token")
        return Identity(tenant=match.tenant, token_fingerprint=fingerprint(token), admin=match.admin)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth_required: bool) -> None:
    """Refuse a non-loopback bind without authentication configured."""
    # req: SEC-1010
    if not auth_required and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to listen on {host!r} without authentication: configure auth tokens "
            "or bind a loopback address")


@dataclass(frozen=True, slots=True)
class Limits:
    """Edge limits, checked before a request reaches the orchestrator."""

    max_body_bytes: int = 1 << 20
    max_prompt_bytes: int = 1 << 18

    def check_prompt(self, prompt: str) -> None:
        # req: SEC-1015
        size = len(prompt.encode())
        if size > self.max_prompt_bytes:
            raise InvalidParams(f"prompt is {size} bytes, over the limit of {self.max_prompt_bytes}",
                                code=ErrorCode.PAYLOAD_TOO_LARGE)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        return self.cert.read_bytes(), self.key.read_bytes()

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


@dataclass(frozen=True)
class SecuritySettings:
    authenticator: Authenticator = field(default_factory=Authenticator)
    limits: Limits = field(default_factory=Limits)
    tls: TlsFiles | None = None


class MissingTokenError(Exception):
    """A configured ``token_env`` names an unset environment variable (a setup error)."""


def security_from_config(config: Config, environ: Mapping[str, str] | None = None) -> SecuritySettings:
    """Build the edges' security settings from the ``auth``, ``limits`` and ``server.tls`` sections."""
    env = os.environ if environ is None else environ
    entries: list[tuple[bytes, Principal]] = []
    for token in config.auth.tokens:
        principal = Principal(tenant=token.tenant, admin=token.admin)
        if token.token_env is not None:
            secret = env.get(token.token_env, "")
            if not secret:
                raise MissingTokenError(f"auth token environment variable {token.token_env} is not set")
            entries.append((_digest(secret), principal))
        elif token.token_sha256 is not None:
            entries.append((bytes.fromhex(token.token_sha256), principal))
    tls = None
    if config.server.tls is not None:
        tls = TlsFiles(Path(config.server.tls.cert_file), Path(config.server.tls.key_file))
    return SecuritySettings(
        authenticator=Authenticator(tuple(entries), config.auth.allow_tenant_header),
        limits=Limits(max_body_bytes=config.limits.max_body_bytes,
                      max_prompt_bytes=config.limits.max_prompt_bytes),
        tls=tls)


__all__ = [
    "ANONYMOUS",
    "TENANT_HEADER",
    "Authenticator",
    "InsecureBindError",
    "Limits",
    "MissingTokenError",
    "Principal",
    "SecuritySettings",
    "TlsFiles",
    "check_bind",
    "fingerprint",
    "is_loopback",
    "security_from_config",
]
