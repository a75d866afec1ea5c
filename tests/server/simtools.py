"""Running `fedveil` as a user would, for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FEDVEIL = str(Path(sys.executable).with_name("fedveil"))
SMALL = """
[run]
name = "e2e"
[federation]
clients = 2
rounds = 2
[data]
records_per_client = 24
public_records = 200
heldout_records = 8
max_length = 48
vocab_size = 400
[train]
method = "dp-opd"
local_steps = 2
batch_size = 8
teacher_steps = 3
public_steps = 5
[distill]
gen_length = 6
prompt_length = 8
[privacy]
# The resume and HE-vs-plaintext tests compare bit-identical reruns: the test switch, never the default
# (docs/METHODS.md §2, "Randomness"); tests/privacy/test_randomness.py covers the OS-entropy default.
reproducible_noise = true
[he]
enabled = false
[audit]
enabled = false
"""


def _cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run([FEDVEIL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
