"""Schema suite (D14): schemathesis over the network against the target's own ``/openapi.json``."""
