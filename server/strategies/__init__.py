"""fedveil: server/strategies."""
