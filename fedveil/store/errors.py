"""Exceptions raised by the fedveil SQL store."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The store cannot be opened, migrated, read or written.

    The message is a single line and names the database URL (password masked)
    where one is involved.
    """


class RunNotFound(StoreError, KeyError):
    """A run id that the store does not hold.

    Parameters
    ----------
    run_id : str
        The id that was looked up.
    """

    def __init__(self, run_id: str) -> None:
        super().__init__(f"unknown run id {run_id!r}")
        self.run_id = run_id

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and add quotes around it.
        return f"unknown run id {self.run_id!r}"
