"""The HTTP gateway (FastAPI): task API, SSE, pools, sessions, probes, metrics, OpenAI routes."""

from llorch.reference.server.http.openapi import openapi_document

__all__ = ["openapi_document"]
