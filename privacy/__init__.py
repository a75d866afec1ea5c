"""fedveil: privacy."""
