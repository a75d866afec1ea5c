"""Audits inside a real (small) `fedveil run` simulation, and `fedveil audit` on its checkpoints
(docs/METHODS.md §8): canary ground truth, exposure / memorisation / MIA / ε audits for every client,
and every ε lower bound at or below the accountant's ε unless the run is flagged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from flwr.app import ArrayRecord

from distill.textdata import public_corpus
from distill.models import build_lm
from distill.tokenizer import train_tokenizer
from fedveil.config import load_config, to_dict
from fedveil.files import NODE_DIR_ENV
from fedveil.store import EPS_LB_FLAG, Store
from server.audits import round_audit_fn
from tests.server.simtools import _cli

SMALL = """
[run]
name = "audit-e2e"
[federation]
clients = 2
rounds = 2
[data]
records_per_client = 24
public_records = 200
heldout_records = 16
max_length = 112
vocab_size = 400
[train]
method = "dp-kd"
local_steps = 2
batch_size = 8
teacher_steps = 3
[he]
enabled = false
[audit]
enabled = true
n_references = 64
"""


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, dict, Path]:
    """The run, and the root of its nodes' own directories (kept apart from the server's run dir)."""
    work = tmp_path_factory.mktemp("audit-e2e")
    (work / "small.toml").write_text(SMALL)
    db = f"sqlite:///{work / 'store.db'}"
    nodes = work / "node-side"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(NODE_DIR_ENV, str(nodes))
        proc = _cli("run", "-c", "small.toml", "--db", db, "--quiet", cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_id = json.loads(_cli("runs", "--format", "json", "--db", db, cwd=work).stdout)[0]["id"]
    shown = _cli("show", run_id, "--format", "json", "--db", db, cwd=work)
    return db, run_id, json.loads(shown.stdout), nodes


def _check_bounds(shown: dict) -> None:
    for bound in shown["epsilon_bounds"]:
        assert bound["accountant_epsilon"] is not None  # DP run: every stored bound has its claim beside it
        if bound["epsilon_lb"] > bound["accountant_epsilon"]:
            assert bound["flagged"] and EPS_LB_FLAG in shown["run"]["flags"]
        else:
            assert not bound["flagged"]


@pytest.mark.slow
def test_run_stores_every_audit(audited_run: tuple[str, str, dict, Path]) -> None:
    _, _, shown, _ = audited_run
    assert shown["run"]["status"] == "completed"
    assert not [e for e in shown["events"] if e["reason"].startswith("audit")], shown["events"]
    canaries = shown["canaries"]
    inserted = [c for c in canaries if c["inserted"] and not c["one_run"]]
    # 24 records cannot hold 21 canary copies under the 30 % share cap (issue 20): the 16-fold canary is
    # withdrawn (a never-inserted control), in the node's plan and in the stored ground truth alike.
    assert sorted(c["repetitions"] for c in inserted) == [1, 4] and {c["client_index"] for c in inserted} == {0}
    assert any(not c["inserted"] and not c["one_run"] for c in canaries)  # never-inserted controls
    assert any(c["one_run"] for c in canaries) and all(c["secret"] for c in canaries)

    audits = shown["audits"]
    kinds = {(a["kind"], a["model"], a["client_index"]) for a in audits}
    for client in (0, 1):
        for model in ("teacher", "student", "global", "finetuned"):
            for kind in ("memorisation", "mia", "epsilon"):
                assert (kind, model, client) in kinds
    for model in ("teacher", "student", "global", "finetuned"):
        assert ("exposure", model, 0) in kinds and ("exposure", model, 1) not in kinds  # only client 0 has canaries
    ids = {c["canary_id"] for c in canaries}
    for audit in (a for a in audits if a["kind"] == "exposure"):
        assert audit["exposures"] and {e["canary_id"] for e in audit["exposures"]} <= ids
        assert all(e["n_ref"] == 64 and e["exposure_rank"] <= math.log2(64) + 1e-9 for e in audit["exposures"])
        assert set(audit["summary"]["by_repetitions"]) == {"0", "1", "4"}
    mia = next(a for a in audits if a["kind"] == "mia" and a["model"] == "global")
    assert {"loss", "zlib", "min_k", "reference"} <= set(mia["summary"])
    # Summaries only (issue 13): per-record statistics stay on the node unless audit.release_scores.
    assert "roc_points" not in mia["summary"]["loss"] and "histogram" not in mia["summary"]["loss"]
    assert mia["params"]["nonmembers"].startswith("held out of training by the node's secret coin")
    memo = next(a for a in audits if a["kind"] == "memorisation" and a["model"] == "global")
    assert memo["summary"]["n_audited"] > 0 and "inherited_from_teacher" in memo["summary"]

    bounds = shown["epsilon_bounds"]
    methods = {(b["client_index"], b["method"], b["details"]["model"]) for b in bounds}
    for client in (0, 1):
        assert {(client, "clopper-pearson", "global"), (client, "clopper-pearson", "student")} <= methods
    assert (0, "one-run", "global") in methods
    # The pooled one-run audit of the released global model, with its power beside it.
    pooled = next(b for b in bounds if b["client_index"] is None and b["method"] == "one-run")
    assert pooled["details"]["pooled"] and pooled["details"]["clients"] == [0, 1]
    assert 0.0 <= pooled["epsilon_lb"] <= pooled["details"]["power"]
    revealed = [c for c in canaries if c["one_run"]]
    assert len(revealed) == pooled["details"]["m"] and sum(c["inserted"] for c in revealed) == pooled["details"][
        "n_included"]
    _check_bounds(shown)


@pytest.mark.slow
def test_on_demand_audit_from_checkpoints(audited_run: tuple[str, str, dict, Path]) -> None:
    from fedveil.commands.audit_cmd import audit_run

    db, run_id, shown, nodes = audited_run
    before = len(shown["audits"])
    with pytest.MonkeyPatch.context() as mp:  # the audit runs as the nodes: their directory, not the server's
        mp.setenv(NODE_DIR_ENV, str(nodes))
        audit_run(run_id, ["exposure", "epsilon"], db, progress=False)
    with Store(db) as store:
        after = store.get_run(run_id)
    new = after["audits"][before:]
    assert {(a["kind"], a["model"]) for a in new if a["client_index"] == 0} == {
        (kind, model) for kind in ("exposure", "epsilon") for model in ("teacher", "student", "global", "finetuned")}
    assert len(after["canaries"]) == len(shown["canaries"])  # ground truth not duplicated
    # The global student's exposures are recomputed from the same checkpoint: same log-perplexities.
    old = next(a for a in shown["audits"] if a["kind"] == "exposure" and a["model"] == "global")
    again = next(a for a in new if a["kind"] == "exposure" and a["model"] == "global")
    assert {e["canary_id"]: round(e["log_perplexity_bits"], 4) for e in old["exposures"]} == {
        e["canary_id"]: round(e["log_perplexity_bits"], 4) for e in again["exposures"]}
    _check_bounds(after)


def test_round_audit_stores_global_exposure_and_never_raises(tmp_path: Path) -> None:
    cfg = load_config(None, ["audit.every_round=true", "audit.n_references=32", "data.vocab_size=400",
                             "he.enabled=false"])
    tok = train_tokenizer(public_corpus(0, 200), vocab_size=400)
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        run_id = store.create_run(to_dict(cfg), name="r", method="dp-opd", task="synthetic-text", he_enabled=False,
                                  num_clients=4, num_rounds=3, seed=0)
        evaluate = round_audit_fn(cfg, store, run_id, tok)
        assert evaluate is not None
        metrics = evaluate(1, ArrayRecord(build_lm(cfg.model.student, len(tok)).state_dict()))
        assert metrics is not None and float(metrics["max-exposure"]) <= math.log2(32)  # type: ignore[arg-type]
        assert evaluate(2, ArrayRecord({})) is None  # a broken model is an event, not an exception
        shown = store.get_run(run_id)
        (audit,) = shown["audits"]
        assert (audit["kind"], audit["model"], audit["server_round"]) == ("exposure", "global", 1)
        assert audit["client_index"] is None
        assert len(audit["exposures"]) == 7  # 3 inserted (client 0) + 4 never-inserted controls
        assert [(e["kind"], e["server_round"]) for e in shown["events"]] == [("failed", 2)]
        assert round_audit_fn(load_config(None, ["he.enabled=false"]), store, run_id, tok) is None  # not configured
        assert round_audit_fn(load_config(None, ["audit.every_round=true"]), store, run_id, tok) is None  # HE on


AUDIT_TABLES = {"canaries", "audits", "exposures", "epsilon_bounds", "alembic_version"}


@pytest.mark.slow
def test_no_secrets_in_logs_or_non_audit_tables(audited_run: tuple[str, str, dict, Path]) -> None:
    """Issue 10: no private record, PII value or canary secret in the run's log or the store's non-audit tables."""
    import sqlite3

    from distill.data import generate_private_records
    from fedveil.config import from_dict

    db, run_id, shown, nodes = audited_run
    cfg = from_dict(shown["run"]["config"])
    log_text = (Path(shown["run"]["run_dir"]).parent / f"{run_id}.log").read_text(errors="replace")
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    tables = [t for (t,) in con.execute("select name from sqlite_master where type='table'") if t not in AUDIT_TABLES]
    dump = "\n".join(repr(row) for t in tables for row in con.execute(f"select * from {t}"))  # noqa: S608
    con.close()
    records = generate_private_records(cfg.data.records_per_client * cfg.federation.clients, cfg.run.seed,
                                       kind=cfg.data.kind)  # type: ignore[arg-type]
    secrets = [record.text[s:e] for record in records for s, e, kind in record.spans
               if kind in ("EMAIL_ADDRESS", "US_SSN", "CREDIT_CARD", "PHONE_NUMBER", "ACCOUNT_NUMBER")]
    secrets += [c["secret"] for c in shown["canaries"]]
    secrets += [r.text[:60] for r in records]
    assert len(secrets) > 50
    for where, text in (("log", log_text), ("store", dump)):
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{len(leaked)} secrets found in the {where}, e.g. {leaked[0]!r}"
    # Client artifacts stay with the client: the server's run directory holds none of them.
    server_side = {p.name for p in Path(shown["run"]["run_dir"]).rglob("*")}
    assert not server_side & {"teacher", "student", "ledger.json", "audit-coins.key", "secret.ctx"}, server_side
    for pid in (0, 1):
        own = nodes / run_id / f"client-{pid}"
        assert {"teacher", "student", "ledger.json", "audit-coins.key"} <= {p.name for p in own.iterdir()}
