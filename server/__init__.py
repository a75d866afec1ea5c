"""fedveil: server."""
