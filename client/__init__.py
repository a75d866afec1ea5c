"""fedveil: client."""
