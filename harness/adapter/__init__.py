"""WorkerAdapter conformance suite (profiles adapter-core, adapter-streaming, adapter-cancel,
adapter-determinism): everything over the ``llorch.v1.WorkerAdapter`` gRPC service."""
