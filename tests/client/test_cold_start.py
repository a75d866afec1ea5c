"""The ClientApp's cold start: a fresh process that answers hello/evaluate never imports Opacus or
the audit scoring stack (deployment starts one process per message)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_client_app_import_skips_opacus_and_sklearn() -> None:
    loaded = _imported_after("import client.app")
    assert "flwr" in loaded and "torch" in loaded  # the probe sees real imports
    assert "opacus" not in loaded and "sklearn" not in loaded


def test_dp_session_imports_opacus_when_training() -> None:
    code = ("import torch\nfrom privacy.dp import DPSession, plan_noise\n"
            "plan_noise(target_epsilon=2.0, delta=1e-5, n_records=100, batch_size=10, total_steps=5,"
            " max_grad_norm=1.0)\n"
            "DPSession(torch.nn.Linear(2, 1), lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4)")
    assert "opacus" in _imported_after(code)


def test_non_private_session_does_not_import_opacus() -> None:
    code = ("import torch\nfrom privacy.dp import DPSession\n"
            "DPSession(torch.nn.Linear(2, 1), lr=0.1, noise_multiplier=None, max_grad_norm=1.0, expected_batch_size=4)")
    assert "opacus" not in _imported_after(code)
