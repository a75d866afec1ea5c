"""fedveil: dashboard."""
