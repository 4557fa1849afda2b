"""Property suite: hypothesis state machines driving the target only through its API."""
