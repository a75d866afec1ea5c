"""Local Hugging Face checkpoints (GPT-2 and Llama families) as teacher and student, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distill.checkpoints import save_tiny, tiny_tokenizer
from tests.server.simtools import SMALL, _cli


def _checkpoints(work: Path, family: str) -> tuple[Path, Path]:
    tok = tiny_tokenizer(family)
    teacher = save_tiny(work / f"{family}-teacher", family, width=48, seed=1, tokenizer=tok)
    student = save_tiny(work / f"{family}-student", family, width=32, seed=2, tokenizer=tok)
    return teacher, student


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_checkpoint_federation_with_he(tmp_path: Path, family: str) -> None:
    """2 clients, DP-OPD with swing, HE on: the run completes, every reply was encrypted, eps is in budget."""
    teacher, student = _checkpoints(tmp_path, family)
    (tmp_path / "small.toml").write_text(SMALL)
    db = f"sqlite:///{tmp_path / 'store.db'}"
    proc = _cli("run", "-c", "small.toml", "--db", db, "--quiet", "--set", "he.enabled=true",
                "--set", "federation.rounds=1", "--set", f"model.student='./{student.name}'",
                "--set", f"model.teacher='{teacher}'", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_id = json.loads(_cli("runs", "--format", "json", "--db", db, cwd=tmp_path).stdout)[0]["id"]
    shown = json.loads(_cli("show", run_id, "--format", "json", "--db", db, cwd=tmp_path).stdout)
    assert shown["run"]["status"] == "completed"
    assert shown["run"]["config"]["model"]["student"] == str(student.resolve())
    ppl = [m["value"] for m in shown["metrics"] if m["name"] == "perplexity"]  # round 0 (the checkpoint), 1
    assert len(ppl) == 2 and all(1 < p < 10 * 400 for p in ppl)  # finite perplexities over the 400 tokens
    clients = [r for r in shown["he_records"] if r["client_index"] is not None]
    assert len(clients) == 2 and all(r["bytes_sent"] > 0 for r in clients)
    assert all(0 < row["epsilon"] <= 2.0 for row in shown["privacy_ledger"])
    # The tokenizer the run used is the checkpoint's own (its special tokens, its vocabulary).
    tok_file = next(a["path"] for a in shown["artifacts"] if a["kind"] == "tokenizer")
    saved = json.loads(Path(tok_file).with_name("tokenizer_config.json").read_text())
    assert saved["eos_token"] == ("<|endoftext|>" if family == "gpt2" else "</s>")


def test_tokenizer_mismatch_fails_before_any_work(tmp_path: Path) -> None:
    teacher, _ = _checkpoints(tmp_path, "llama")
    student = save_tiny(tmp_path / "gpt2", "gpt2", tokenizer=tiny_tokenizer("gpt2", vocab_size=380))
    proc = _cli("run", "--db", f"sqlite:///{tmp_path / 'store.db'}", "--quiet",
                "--set", f"model.student='{student}'", "--set", f"model.teacher='{teacher}'", cwd=tmp_path)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "380 tokens" in line and "400 tokens" in line
    assert str(teacher) in line and str(student) in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store.db").exists()  # nothing was started


@pytest.mark.parametrize("name", ["gpt2", "./missing-dir"])
def test_hub_names_and_missing_directories_exit_2(tmp_path: Path, name: str) -> None:
    proc = _cli("run", "--quiet", "--set", f"model.student='{name}'", cwd=tmp_path)
    assert proc.returncode == 2 and "nothing is downloaded" in proc.stderr and "\n" not in proc.stderr.strip()
