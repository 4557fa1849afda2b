"""Real-model end-to-end suite (D18): through the orchestrator's public API only."""
