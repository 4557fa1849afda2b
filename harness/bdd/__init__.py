"""BDD suite: the user-visible journeys as feature files tagged with requirement IDs (D7)."""
