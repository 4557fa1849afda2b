"""The harness proves itself: its pure checkers on planted streams, and the suites run through
``llorch conform`` against each deliberately faulty target (``harness/faulty/``)."""
