"""Determinism suite and proof bundles: `llorch determinism`, `llorch bundle verify`."""
