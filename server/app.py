"""fedveil ServerApp: parse the run configuration, run the federation, record everything."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.coordinator import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls; all the work is in :func:`server.coordinator.run_federation`."""
    run_federation(grid, dict(context.run_config))
