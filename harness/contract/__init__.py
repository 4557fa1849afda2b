"""Contract suite: stream-contract checks over gRPC and SSE, the error model, and pacts (HTTP
consumer/provider for ``llorch.client``, V4 message pacts for the task-event stream)."""
