"""fedveil SQL store: runs, rounds, privacy ledger, HE costs, audits.

Public API::

    from fedveil.store import Store, default_db_url, MetricRow, LedgerRow, ...

    with Store(default_db_url()) as store:
        run_id = store.create_run(config, name=..., method=..., task=..., he_enabled=...,
                                  num_clients=..., num_rounds=..., seed=...)

The JSON shape of :meth:`Store.get_run` is documented in :mod:`fedveil.store.api`.
"""

from fedveil.store.api import Store
from fedveil.store.engine import default_db_url, mask_url, sqlite_url
from fedveil.store.errors import RunNotFound, StoreError
from fedveil.store.migrate import check_models_match, current_revision, head_revision, upgrade
from fedveil.store.models import EPS_LB_FLAG
from fedveil.store.rows import CanaryRow, EventRow, ExposureRow, HERow, LedgerRow, MetricRow

__all__ = [
    "EPS_LB_FLAG",
    "CanaryRow",
    "EventRow",
    "ExposureRow",
    "HERow",
    "LedgerRow",
    "MetricRow",
    "RunNotFound",
    "Store",
    "StoreError",
    "check_models_match",
    "current_revision",
    "default_db_url",
    "head_revision",
    "mask_url",
    "sqlite_url",
    "upgrade",
]
