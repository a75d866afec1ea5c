"""A warm ClientApp worker: one long-lived process per SuperNode instead of one ``flwr-clientapp`` per task.

NOT YET WIRED IN: nothing in fedveil starts this module yet and it has not run end-to-end (issue 19).

Flower 1.42 with ``flower-supernode --isolation process`` starts no executor; a SuperExec acquires each
ClientApp task (``AcquireTask`` returns a per-task token) and launches a fresh ``flwr-clientapp`` that pulls
the task input, installs the FAB, imports the app, runs one message, pushes the reply and the Context and
exits. This module takes the SuperExec's place:

* a supervisor (this process) acquires tasks and hands each token to a child process bound to one
  (FAB hash, run id): the child keeps the loaded app and its imports warm for later tasks of that run, and a
  new run gets a new child, so module-level caches of one run never serve another (Context.state is
  Flower's, pulled and pushed per task as in the stock path);
* a child that dies before it pulled its input is restarted and gets the same token (the task is retried);
  one that dies after pulling is answered with a CLIENT_APP_CRASHED error reply and a FAILED task, so the
  round records the node as failed instead of waiting for Flower's 60 s heartbeat expiry.

It uses Flower's internal runtime functions (``flwr.supernode.runtime.run_clientapp``), hence the exact pin.
"""

from __future__ import annotations

FLOWER_VERSION = "1.42.0"  # must equal pyproject's flwr-version-target and the Dockerfiles' pins


class WrongFlowerVersion(RuntimeError):
    """The installed Flower is not the one whose internal runtime API this worker was written against."""


def check_flower_version(found: str | None = None) -> None:
    """Refuse any Flower but :data:`FLOWER_VERSION`; the message says what to use instead.

    Raises
    ------
    WrongFlowerVersion
        ``found`` (default: the installed ``flwr.__version__``) differs from the pin.
    """
    if found is None:
        import flwr
        found = str(flwr.__version__)
    if found != FLOWER_VERSION:
        raise WrongFlowerVersion(
            f"fedveil node worker needs flwr=={FLOWER_VERSION} exactly (found {found}); use Flower's stock "
            "executor instead: start flower-supernode without --isolation process")
