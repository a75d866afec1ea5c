"""fedveil: fedveil."""
