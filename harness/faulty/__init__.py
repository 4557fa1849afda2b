"""Deliberately faulty targets (D15): wire-level servers or proxies, each breaking one rule, so the
self-test can prove that the suites fail them with the right requirement IDs. Excluded from link
scanning: their code breaks requirements on purpose."""
