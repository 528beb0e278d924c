"""The campaign ledger: transitions, idempotent proposals, append-only storage, crash recovery, SIGKILL safety."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loop.ledger import (INTERRUPTED_REASON, KINDS, LEDGER_FILE, SCHEMA_VERSION, STATES, Ledger, LedgerError,
                         recover, sample_id_for)

CONFIG = {"name": "night", "batch_size": 3, "seed": 1}


def _batch(n: int = 3, ph0: float = 10.0) -> list[dict]:
    return [{"conditions": {"ph": ph0 + 0.1 * i, "atmosphere": "n2"}, "predicted": {"d50_um": 4.0 + i},
             "source": "pso"} for i in range(n)]


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path) as led:
        led.start_campaign(CONFIG, campaign_id="night")
        yield led


def _dispatch(led: Ledger, eid: str) -> str:
    attempt = led.next_attempt(eid)
    led.mark_dispatched(eid, sample_id_for(eid, attempt), attempt)
    return sample_id_for(eid, attempt)


def _n_events(led: Ledger) -> int:
    return len(led.events())


# -- proposals ---------------------------------------------------------------------------------------------------
def test_propose_returns_deterministic_ids_and_is_idempotent(ledger):
    ids = ledger.propose(1, _batch())
    assert ids == ["night-r001-e00", "night-r001-e01", "night-r001-e02"]
    n = _n_events(ledger)
    # a resumed flow re-proposes round 1 (maybe with another batch): the recorded one stands, nothing is written
    assert ledger.propose(1, _batch(3, ph0=11.0)) == ids
    assert ledger.propose(1, _batch(5)) == ids
    assert _n_events(ledger) == n
    assert ledger.experiment(ids[1])["conditions"] == {"ph": 10.1, "atmosphere": "n2"}
    assert ledger.pending() == ids and ledger.last_round() == 1


def test_propose_refuses_earlier_rounds_empty_batches_and_bad_experiments(ledger):
    ledger.propose(2, _batch())
    with pytest.raises(LedgerError, match="round 1.*round 2 was proposed"):
        ledger.propose(1, _batch())
    with pytest.raises(LedgerError, match="at least one"):
        ledger.propose(3, [])
    with pytest.raises(LedgerError, match="'conditions'"):
        ledger.propose(3, [{"predicted": {}}])
    with pytest.raises(LedgerError, match="cannot be stored"):
        ledger.propose(3, [{"conditions": {"ph": object()}}])
    assert ledger.last_round() == 2 and len(ledger.experiments()) == 3  # nothing of the failed proposals


def test_writes_need_a_started_campaign(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    assert led.status()["state"] == "not_started" and led.campaign_id is None
    with pytest.raises(LedgerError, match="start_campaign"):
        led.propose(1, _batch())


def test_start_campaign_is_idempotent_and_keeps_the_snapshot(tmp_path):
    led = Ledger(tmp_path)
    cid = led.start_campaign(CONFIG)
    assert cid.startswith("night-")
    assert led.start_campaign(dict(CONFIG)) == cid
    assert led.config() == CONFIG
    with pytest.raises(LedgerError, match="already holds campaign"):
        led.start_campaign({**CONFIG, "seed": 2})
    assert Ledger(tmp_path / LEDGER_FILE).campaign_id == cid


# -- transitions -------------------------------------------------------------------------------------------------
def test_full_life_cycle_and_experiments_view(ledger):
    ids = ledger.propose(1, _batch())
    sample = _dispatch(ledger, ids[0])
    assert ledger.state_of(ids[0]) == "dispatched" and ledger.in_flight() == [ids[0]]
    ledger.mark_completed(ids[0], {"d50_um": np.float64(4.2), "sphericity_mean": 0.9, "texture": float("nan")},
                          ["img/a.tif", "img/b.tif"], run_uid="uid-1")
    assert ledger.completed() == [ids[0]] and ledger.in_flight() == []
    df = ledger.experiments()
    assert list(df["experiment_id"]) == ids
    row = df.iloc[0]
    assert row["state"] == "completed" and row["attempts"] == 1 and row["sample_ids"] == [sample]
    assert row["sample_id"] == sample and row["run_uid"] == "uid-1" and row["images"] == ["img/a.tif", "img/b.tif"]
    assert row["descriptors"]["texture"] is None  # NaN is stored as null
    assert row["d50_um"] == 4.2 and row["ph"] == 10.0 and row["source"] == "pso"
    assert list(df["state"]) == ["completed", "proposed", "proposed"]


@pytest.mark.parametrize("action, match", [
    (lambda led, e: led.mark_completed(e, {}, []), r"cannot complete experiment 'night-r001-e00': its state is "
                                                   r"'proposed' \(never dispatched\)"),
    (lambda led, e: led.mark_failed(e, "x", 1, True), "cannot fail.*'proposed'"),
    (lambda led, e: led.mark_requeued(e, "x"), "cannot requeue.*'proposed'"),
    (lambda led, e: led.mark_dispatched(e, "s", 2), "as attempt 2.*this is attempt 1"),
    (lambda led, e: led.mark_dispatched(e, "", 1), "sample_id"),
    (lambda led, e: led.mark_dispatched("night-r009-e00", "s", 1), "'night-r009-e00': no such experiment"),
])
def test_illegal_transitions_name_the_experiment_and_its_state(ledger, action, match):
    eid = ledger.propose(1, _batch())[0]
    n = _n_events(ledger)
    with pytest.raises(LedgerError, match=match):
        action(ledger, eid)
    assert _n_events(ledger) == n


def test_a_completed_experiment_is_never_dispatched_again(ledger):
    eid = ledger.propose(1, _batch(1))[0]
    _dispatch(ledger, eid)
    ledger.mark_completed(eid, {"d50_um": 4.0}, [])
    for action in (lambda: ledger.mark_dispatched(eid, "new-sample", 2), lambda: ledger.mark_completed(eid, {}, []),
                   lambda: ledger.mark_abandoned(eid, "x"), lambda: ledger.mark_requeued(eid, "x")):
        with pytest.raises(LedgerError, match=f"{eid}.*its state is 'completed'"):
            action()


def test_retryable_failure_then_retry_with_new_sample(ledger):
    eid = ledger.propose(1, _batch(1))[0]
    s1 = _dispatch(ledger, eid)
    with pytest.raises(LedgerError, match="attempt in flight is 1"):
        ledger.mark_failed(eid, "pump stalled", attempt=2, retryable=True)
    ledger.mark_failed(eid, "pump stalled", attempt=1, retryable=True)
    with pytest.raises(LedgerError, match="dispatched before"):
        ledger.mark_dispatched(eid, s1, 2)  # the failed sample's id is never reused
    s2 = _dispatch(ledger, eid)
    assert s2 != s1
    ledger.mark_completed(eid, {"d50_um": 4.1}, ["a.tif"])
    st_ = ledger.status()
    assert (st_["completed"], st_["failures"], st_["attempts"], st_["duplicates"]) == (1, 1, 2, 0)
    assert ledger.experiment(eid)["sample_ids"] == [s1, s2]


def test_non_retryable_failure_is_terminal(ledger):
    eid = ledger.propose(1, _batch(1))[0]
    _dispatch(ledger, eid)
    ledger.mark_failed(eid, "reactor leak", attempt=1, retryable=False)
    with pytest.raises(LedgerError, match="not retryable"):
        _dispatch(ledger, eid)
    assert ledger.rounds_done() == 1 and ledger.status()["failed"] == 1


def test_approval_edit_and_skip(ledger):
    a, b, c = ledger.propose(1, _batch())
    ledger.record_approval(a, "approve", by="ana")
    ledger.record_approval(b, "edit", conditions={"ph": 11.0, "atmosphere": "sealed"}, by="ana")
    ledger.record_approval(c, "skip", by="ana", note="looks unsafe")
    assert ledger.experiment(b)["conditions"] == {"ph": 11.0, "atmosphere": "sealed"}
    assert ledger.state_of(c) == "abandoned" and "skipped by ana: looks unsafe" in ledger.experiment(c)["reason"]
    _dispatch(ledger, b)
    dispatched = ledger.events().query("kind == 'dispatched'").iloc[0]
    assert dispatched["payload"]["conditions"] == {"ph": 11.0, "atmosphere": "sealed"}  # what went to the reactor
    with pytest.raises(LedgerError, match="approve"):
        ledger.record_approval(b, "approve")  # already dispatched
    with pytest.raises(LedgerError, match="decision"):
        ledger.record_approval(a, "maybe")
    assert ledger.pending() == [a]


def test_retrain_events_give_back_the_current_model(ledger):
    assert ledger.current_model_dir() is None and ledger.retrain_in_progress() is None
    with pytest.raises(LedgerError, match="retrain_started first"):
        ledger.retrain_finished(2, "models/r002")
    ledger.retrain_started(2, "models/r002")
    assert ledger.retrain_in_progress() == 2
    ledger.retrain_finished(2, "models/r002", metrics={"fid": 12.5})
    ledger.retrain_started(4, "models/r004")  # killed during this fine-tune
    resumed = Ledger(ledger.path, create=False)
    assert resumed.current_model_dir() == "models/r002" and resumed.retrain_in_progress() == 4


def test_finish_abandons_waiting_experiments_and_refuses_in_flight(ledger):
    a, b, c = ledger.propose(1, _batch())
    _dispatch(ledger, a)
    with pytest.raises(LedgerError, match=f"{a}.*in flight"):
        ledger.finish("budget spent", met=False)
    ledger.mark_completed(a, {"d50_um": 4.0}, [])
    ledger.finish("target met", met=True)
    assert ledger.is_finished()
    assert [ledger.state_of(e) for e in (a, b, c)] == ["completed", "abandoned", "abandoned"]
    assert "campaign finished before dispatch: target met" in ledger.experiment(b)["reason"]
    status = ledger.status()
    assert status["state"] == "finished" and status["met"] is True and status["finish_reason"] == "target met"
    with pytest.raises(LedgerError, match="is finished"):
        ledger.propose(2, _batch())
    with pytest.raises(LedgerError, match="is finished"):
        ledger.finish("again", met=True)
    assert ledger.recover() == {"requeued": [], "abandoned": []}


def test_status_counts(ledger):
    ids = ledger.propose(1, _batch(3)) + ledger.propose(2, _batch(3))
    for eid in ids[:4]:
        _dispatch(ledger, eid)
    ledger.mark_completed(ids[0], {"d50_um": 4.0}, [])
    ledger.mark_completed(ids[1], {"d50_um": 4.0}, [])
    ledger.mark_completed(ids[2], {"d50_um": 4.0}, [])
    ledger.mark_failed(ids[3], "no particles", 1, retryable=False)
    ledger.mark_abandoned(ids[4], "operator")
    status = ledger.status()
    assert {k: status[k] for k in ("state", "proposed", "dispatched", "completed", "failed", "duplicates")} == \
        {"state": "running", "proposed": 6, "dispatched": 4, "completed": 3, "failed": 1, "duplicates": 0}
    assert (status["abandoned"], status["pending"], status["in_flight"], status["rounds"], status["rounds_done"]) == \
        (1, 1, 0, 2, 1)


# -- append-only storage -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sql", ["UPDATE events SET kind = 'completed' WHERE kind = 'dispatched'",
                                 "UPDATE events SET payload = '{}'", "DELETE FROM events",
                                 "DELETE FROM events WHERE kind = 'dispatched'",
                                 "UPDATE meta SET value = '{}' WHERE key = 'config'", "DELETE FROM meta"])
def test_triggers_forbid_update_and_delete(ledger, sql):
    eid = ledger.propose(1, _batch(1))[0]
    _dispatch(ledger, eid)
    before = ledger.events()
    raw = sqlite3.connect(ledger.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute(sql)
    raw.rollback()
    raw.close()
    assert ledger.events().equals(before) and ledger.state_of(eid) == "dispatched"


def test_schema_rejects_unknown_kinds_and_invalid_json(ledger):
    raw = sqlite3.connect(ledger.path)
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute("INSERT INTO events (campaign_id, kind, payload, created_at) VALUES ('night', 'oops', '{}', 'x')")
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute("INSERT INTO events (campaign_id, kind, payload, created_at) "
                    "VALUES ('night', 'proposed', '{', 'x')")
    raw.close()


def test_opening_foreign_newer_or_missing_files_fails_clearly(tmp_path):
    newer = tmp_path / "newer.sqlite"
    raw = sqlite3.connect(newer)
    raw.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    raw.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION + 1),))
    raw.commit()
    raw.close()
    with pytest.raises(LedgerError, match=f"schema version {SCHEMA_VERSION + 1}.*reads version {SCHEMA_VERSION}"):
        Ledger(newer)
    foreign = tmp_path / "foreign.sqlite"
    raw = sqlite3.connect(foreign)
    raw.execute("CREATE TABLE samples (x)")
    raw.commit()
    raw.close()
    with pytest.raises(LedgerError, match="not a campaign ledger"):
        Ledger(foreign)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(LedgerError, match="not a readable campaign ledger"):
        Ledger(garbage)
    with pytest.raises(LedgerError, match="no campaign ledger"):
        Ledger(tmp_path / "absent.sqlite", create=False)
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger(tmp_path / "no" / "such" / "dir.sqlite")


def test_pragmas_wal_and_full_sync(ledger):
    conn = ledger._connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# -- crash and resume --------------------------------------------------------------------------------------------
def test_recover_requeues_in_flight_with_attempt_counting_then_abandons(tmp_path):
    first = Ledger(tmp_path)
    first.start_campaign(CONFIG, campaign_id="night")
    a, b = first.propose(1, _batch(2))
    _dispatch(first, a)
    _dispatch(first, b)
    first.mark_completed(b, {"d50_um": 4.0}, ["b.tif"])
    del first  # killed: nothing closed, nothing flushed beyond what was committed
    samples = []
    for attempt in (1, 2, 3):
        resumed = Ledger(tmp_path, create=False)  # a new process opens the file
        assert resumed.in_flight() == [a]
        assert resumed.experiment(a)["attempts"] == attempt
        report = recover(tmp_path, max_attempts=3)
        assert resumed.in_flight() == []
        if attempt < 3:
            assert report == {"requeued": [a], "abandoned": []}
            row = resumed.experiment(a)
            assert row["state"] == "requeued" and row["reason"] == INTERRUPTED_REASON
            assert resumed.pending() == [a] and resumed.next_attempt(a) == attempt + 1
            with pytest.raises(LedgerError, match="dispatched before"):
                resumed.mark_dispatched(a, row["sample_id"], attempt + 1)  # the half-made sample is not reused
            samples.append(_dispatch(resumed, a))  # ... and killed again mid-synthesis
        else:
            assert report == {"requeued": [], "abandoned": [a]}
            row = resumed.experiment(a)
            assert row["state"] == "abandoned" and "gave up after 3 attempt(s)" in row["reason"]
            assert INTERRUPTED_REASON in row["reason"]
        assert resumed.status()["duplicates"] == 0
    assert len(set(resumed.experiment(a)["sample_ids"])) == 3
    assert resumed.recover() == {"requeued": [], "abandoned": []}  # idempotent
    assert resumed.state_of(b) == "completed"  # recorded results are untouched


def test_recover_abandon_policy_and_unretried_failures(ledger):
    a, b, c = ledger.propose(1, _batch())
    for eid in (a, b, c):
        _dispatch(ledger, eid)
    ledger.mark_failed(b, "timeout", 1, retryable=True)  # killed before the retry
    ledger.mark_failed(c, "leak", 1, retryable=False)
    report = ledger.recover(policy="abandon")
    assert report == {"requeued": [], "abandoned": [a, b]}
    assert "policy 'abandon'" in ledger.experiment(a)["reason"]
    assert ledger.state_of(c) == "failed"
    with pytest.raises(LedgerError, match="policy"):
        ledger.recover(policy="retry")


def test_duplicates_stay_zero_in_requeue_cycles_and_count_a_double_dispatch(ledger):
    a, b = ledger.propose(1, _batch(2))
    for _ in range(2):
        _dispatch(ledger, a)
        ledger.mark_requeued(a, "operator cleaned the reactor")
    _dispatch(ledger, a)
    assert ledger.status()["duplicates"] == 0
    _dispatch(ledger, b)
    with pytest.raises(LedgerError, match="its state is 'dispatched'"):
        ledger.mark_dispatched(b, "b-again", 2)  # the API refuses ...
    raw = sqlite3.connect(ledger.path)  # ... a buggy writer bypassing it is caught by status()
    raw.execute("INSERT INTO events (campaign_id, experiment_id, round, kind, payload, created_at) "
                "VALUES ('night', ?, 1, 'dispatched', ?, '2030-01-01T00:00:00+00:00')",
                (b, json.dumps({"sample_id": "b-again", "attempt": 2})))
    raw.commit()
    raw.close()
    assert ledger.status()["duplicates"] == 1
    assert bool(ledger.experiments().set_index("experiment_id").loc[b, "duplicate"])


_OPS = st.lists(st.tuples(st.sampled_from(["dispatch", "complete", "fail", "fail_final", "requeue", "abandon",
                                           "recover", "propose"]), st.integers(0, 5)), max_size=25)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_any_sequence_of_calls_keeps_the_ledger_consistent(tmp_path_factory, ops):
    led = Ledger(tmp_path_factory.mktemp("prop"))
    led.start_campaign(CONFIG, campaign_id="p")
    led.propose(1, _batch(3))
    for op, i in ops:
        ids = list(led.experiments()["experiment_id"])
        eid = ids[i % len(ids)]
        try:
            if op == "dispatch":
                led.mark_dispatched(eid, sample_id_for(eid, led.next_attempt(eid)), led.next_attempt(eid))
            elif op == "complete":
                led.mark_completed(eid, {"d50_um": 4.0}, [])
            elif op in ("fail", "fail_final"):
                led.mark_failed(eid, "x", led.next_attempt(eid) - 1, retryable=op == "fail")
            elif op == "requeue":
                led.mark_requeued(eid, "x")
            elif op == "abandon":
                led.mark_abandoned(eid, "x")
            elif op == "recover":
                led.recover(max_attempts=2)
                assert led.in_flight() == []
            else:
                led.propose((led.last_round() or 0) + 1, _batch(2))
        except LedgerError:
            pass
    status = led.status()
    df = led.experiments()
    assert status["duplicates"] == 0 and set(df["state"]) <= set(STATES)
    assert status["completed"] + status["failed"] + status["abandoned"] + status["pending"] + status["in_flight"] \
        == status["proposed"]
    assert all(len(set(s)) == len(s) for s in df["sample_ids"])  # sample ids never reused
    assert (df["attempts"] == df["sample_ids"].map(len)).all()
    led.close()


# -- SIGKILL in the middle of writing ----------------------------------------------------------------------------
def _write_until_killed(path: str, ready) -> None:
    """A campaign process: resume (recover, redo pending), then write rounds of big events until killed."""
    pad = "x" * 20000  # big payloads: a kill is likely to land inside a write
    led = Ledger(path)
    led.start_campaign(CONFIG, campaign_id="kill")
    led.recover(max_attempts=10)
    for eid in led.pending():
        _dispatch(led, eid)
        led.mark_completed(eid, {"d50_um": 4.0, "note": pad}, [f"{eid}.tif"], run_uid="redo")
    r = led.last_round() or 0
    while True:
        r += 1
        ids = led.propose(r, [{**e, "pad": pad} for e in _batch(4)])
        for eid in ids:
            _dispatch(led, eid)
            led.mark_completed(eid, {"d50_um": 4.0, "note": pad}, [f"{eid}.tif"], run_uid=f"uid-{eid}")
        if r % 3 == 0:
            ready.set()


def _check_consistent(path) -> dict:
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = raw.execute("SELECT id, campaign_id, kind, payload, created_at, round, experiment_id FROM events "
                       "ORDER BY id").fetchall()
    raw.close()
    ids = [r[0] for r in rows]
    assert ids == list(range(1, len(ids) + 1))  # no gap: no transaction half applied
    proposed_per_round: dict[int, int] = {}
    for _, cid, kind, payload, created_at, rnd, eid in rows:
        assert cid == "kill" and kind in KINDS and created_at.endswith("+00:00")
        body = json.loads(payload)  # every payload is whole JSON
        if kind == "proposed":
            proposed_per_round[rnd] = proposed_per_round.get(rnd, 0) + 1
            assert body["pad"] == "x" * 20000
        if kind == "completed":
            assert body["descriptors"]["note"] == "x" * 20000 and body["images"] == [f"{eid}.tif"]
    assert set(proposed_per_round.values()) == {4}  # a batch is all there or absent
    return proposed_per_round


@pytest.mark.skipif(not hasattr(signal, "SIGKILL") or sys.platform == "win32", reason="needs POSIX SIGKILL")
def test_sigkill_mid_write_leaves_whole_events_and_resumes(tmp_path):
    path = str(tmp_path / LEDGER_FILE)
    ctx = multiprocessing.get_context("fork")
    rng = np.random.default_rng(0)
    for kill in range(3):
        ready = ctx.Event()
        child = ctx.Process(target=_write_until_killed, args=(path, ready), daemon=True)
        child.start()
        assert ready.wait(60), "the writer never got going"
        time.sleep(float(rng.uniform(0.0, 0.05)))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        rounds = _check_consistent(path)
        led = Ledger(path, create=False)  # the parent reopens the file as `campaign resume` would
        status = led.status()
        assert status["duplicates"] == 0 and status["rounds"] == len(rounds)
        assert status["in_flight"] <= 1  # the writer dispatches one experiment at a time
        led.close()
    led = Ledger(path, create=False)
    led.recover(max_attempts=10)
    assert led.in_flight() == [] and led.status()["duplicates"] == 0
    df = led.experiments()
    assert set(df["state"]) <= {"completed", "requeued", "proposed"}  # the last kill's leftovers wait for dispatch
    assert (df.loc[df["round"] < df["round"].max(), "state"] == "completed").all()  # each resume finished its work
