"""Fixtures of the dashboard tests: stores filled through the real Store API (see ``store_data``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedveil.store import Store, sqlite_url
from tests.dashboard.store_data import FAILED_RUN, FAIL_MESSAGE, RUNNING_RUN, fill_digits_run, fill_text_run


@pytest.fixture()
def empty_db(tmp_path: Path) -> str:
    """URL of a migrated store without any run."""
    url = sqlite_url(tmp_path / "empty.db")
    Store(url).close()
    return url


@pytest.fixture()
def filled_db(tmp_path: Path) -> Iterator[str]:
    """URL of a store with the text run and the digits run (text run created first)."""
    url = sqlite_url(tmp_path / "filled.db")
    with Store(url) as store:
        fill_text_run(store)
        fill_digits_run(store)
    yield url


@pytest.fixture()
def states_db(tmp_path: Path) -> str:
    """URL of a store with a run in progress (1 of 3 rounds) and a failed run."""
    url = sqlite_url(tmp_path / "states.db")
    with Store(url) as store:
        fill_text_run(store, RUNNING_RUN, rounds=1, finish=False)
        fill_text_run(store, FAILED_RUN, rounds=1, finish=False)
        store.fail_run(FAILED_RUN, FAIL_MESSAGE)
    return url
