"""The embedded SQLite store of tasks, events, usage and sessions (``sqlite.py``)."""
