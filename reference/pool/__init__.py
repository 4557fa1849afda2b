"""Pools of worker replicas: registry, probing, slot leases, drain, atomic reload (``registry.py``)."""
