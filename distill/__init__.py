"""fedveil: distill."""
