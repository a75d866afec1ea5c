"""Start the Streamlit dashboard (``fedveil dashboard``, ``make dashboard``) as a subprocess.

The store URL travels in ``$FEDVEIL_DB``; the dashboard opens it read-only apart from applying
pending schema migrations. The server binds to the loopback interface unless told otherwise,
because the Leakage audit page shows canary secrets (audit data).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedveil.store.engine import normalise_url

PROJECT_DIR = Path(__file__).resolve().parents[2]
APP_PATH = PROJECT_DIR / "dashboard" / "app.py"


def app_path() -> Path:
    """Absolute path of the dashboard's entry script.

    Raises
    ------
    FileNotFoundError
        The ``dashboard`` package is not next to ``fedveil`` (broken install).
    """
    if not APP_PATH.is_file():
        raise FileNotFoundError(f"dashboard entry script not found at {APP_PATH}")
    return APP_PATH


def streamlit_command(port: int, *, headless: bool = True, address: str = "127.0.0.1") -> list[str]:
    """The ``streamlit run`` command line for the dashboard.

    Parameters
    ----------
    port : int
        TCP port, 1 to 65535.
    headless : bool
        Do not open a browser window.
    address : str
        Interface to bind (``"0.0.0.0"`` to serve other machines).

    Returns
    -------
    list of str
        argv, starting with this Python interpreter.

    Raises
    ------
    ValueError
        ``port`` outside 1..65535.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer from 1 to 65535; got {port!r}")
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path()),
        "--server.headless", "true" if headless else "false",
        "--server.port", str(port),
        "--server.address", address,
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
    ]


def dashboard_env(db_url: str) -> dict[str, str]:
    """Environment of the dashboard process: the store URL, the project on ``PYTHONPATH``, no telemetry."""
    env = dict(os.environ)
    env["FEDVEIL_DB"] = normalise_url(db_url)
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH", "")]))
    return env


def start(db_url: str, port: int, headless: bool = True, *, address: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    """Start the dashboard server in the background and return its process (the caller stops it)."""
    return subprocess.Popen(streamlit_command(port, headless=headless, address=address), env=dashboard_env(db_url),
                            cwd=str(PROJECT_DIR))


def launch(db_url: str, port: int, headless: bool = True, *, address: str = "127.0.0.1") -> int:
    """Run the dashboard in the foreground until it exits or Ctrl-C.

    Parameters
    ----------
    db_url : str
        SQLAlchemy URL of the store (or a plain SQLite file path).
    port : int
        TCP port to serve on.
    headless : bool
        Do not open a browser window.
    address : str
        Interface to bind; loopback by default.

    Returns
    -------
    int
        The server's exit status (130 after Ctrl-C).
    """
    proc = start(db_url, port, headless, address=address)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 130
