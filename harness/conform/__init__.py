"""``llorch conform``: the suites behind a CLI, with known-failing lists and a certification summary."""
