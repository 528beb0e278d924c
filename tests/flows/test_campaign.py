"""Closed-loop campaigns end to end on the simulators: dry run, kill-and-resume, faults, bad configs."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_runner import invoke


TINY = """
name = "t"
data_dir = "{data_dir}"
batch_size = 2
retrain_every_rounds = 0
seed = 3
surrogate_steps = 2
images_per_condition = 1
[target]
d50_um = 3.4
sphericity_mean = 0.89
texture = 0.57
[budget]
experiments = {budget}
hours = 1.0
[pso]
particles = 4
iters = 2
"""


def write_config(tmp_path: Path, budget: int = 4, **extra) -> Path:
    path = tmp_path / "campaign.toml"
    text = TINY.format(data_dir=tmp_path / "run", budget=budget)
    text = "\n".join(f"{k} = {json.dumps(v)}" for k, v in extra.items()) + "\n" + text
    path.write_text(text)
    return path


def test_campaign_start_records_every_experiment_and_reports(tmp_path, prefect_harness):
    result = invoke("campaign", "start", write_config(tmp_path, budget=4), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["experiments"] == 4 or summary["met"]
    assert set(summary) >= {"met", "experiments", "best", "data_dir", "report"}
    assert Path(summary["report"]).read_text().startswith("<!doctype html>")
    status = json.loads(invoke("campaign", "status", tmp_path / "run", "--json").stdout)
    assert status["duplicates"] == 0 and status["in_flight"] == 0
    assert status["completed"] + status["failed"] + status["abandoned"] == status["proposed"]
    # every completed experiment's run is in Tiled, with its images on disk
    from flows.run_store import RunStore
    from loop.ledger import Ledger

    store = RunStore.open(tmp_path / "run")
    with Ledger(tmp_path / "run", create=False) as ledger:
        for eid in ledger.completed():
            row = ledger.experiment(eid)
            assert row["run_uid"] in store.runs()
            assert all(Path(p).is_file() for p in row["images"])
            if row["source"] == "botorch":  # swarm, local or random pick: each carries the surrogate's prediction
                assert row["predicted"] and row["predicted"]["d50_um"] > 0
    store.close()
    # the reactor takes one experiment at a time, whoever else uses this Prefect server
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_concurrency_limit_by_tag("reactor").concurrency_limit == 1
    # starting again in the same folder is refused and leaves the ledger untouched
    before = (tmp_path / "run" / "ledger.sqlite").stat().st_size
    again = invoke("campaign", "start", write_config(tmp_path, budget=4))
    assert again.exit_code == 2 and "campaign resume" in again.stderr
    assert (tmp_path / "run" / "ledger.sqlite").stat().st_size == before


@pytest.mark.parametrize("extra, words", [
    ({"colour": "red"}, ["colour"]),
    ({"batch_size": 0}, ["batch_size"]),
    ({"model_dir": "/no/such/model"}, ["model_dir"]),
    ({"local_candidates": -1}, ["local_candidates", "0-1024"]),
])
def test_bad_configs_exit_2_and_name_the_field(tmp_path, extra, words):
    path = write_config(tmp_path)
    text = path.read_text()
    for key in extra:
        text = "\n".join(line for line in text.splitlines() if not line.startswith(f"{key} ="))
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in extra.items()) + "\n" + text)
    result = invoke("campaign", "start", path)
    assert result.exit_code == 2
    for word in words:
        assert word in result.stderr
    assert not (tmp_path / "run" / "ledger.sqlite").exists()


def test_resume_of_an_unknown_folder_is_a_clear_error(tmp_path):
    result = invoke("campaign", "resume", tmp_path)
    assert result.exit_code == 2 and "ledger" in result.stderr


def finished_campaign(run_dir: Path):
    """Status, events and experiment rows of a campaign that must be finished with every experiment accounted
    for: none in flight, none dispatched twice, each completed, failed or abandoned."""
    from loop.ledger import Ledger

    with Ledger(run_dir, create=False) as ledger:
        status, events = ledger.status(), ledger.events()
        rows = [ledger.experiment(e) for e in ledger.experiments()["experiment_id"]]
    assert status["state"] == "finished" and status["duplicates"] == 0 and status["in_flight"] == 0
    assert status["completed"] + status["failed"] + status["abandoned"] == status["proposed"]
    return status, events, rows


def _events(db: Path) -> list[tuple[str, int | None]]:
    """(kind, round) of every ledger event, read-only (the campaign process keeps writing)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT kind, round FROM events ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []


#: Where the campaign is killed, in order (each a predicate on the ledger's events); after the last kill a
#: final resume runs to the end.
KILL_POINTS = {
    "before the first proposal (swarm)": lambda ev: ev and not any(k == "proposed" for k, _ in ev),
    "mid-synthesis": lambda ev: ev and ev[-1][0] == "dispatched",
    "mid-retrain": lambda ev: sum(k == "retrain_started" for k, _ in ev) > sum(k == "retrain_finished" for k, _ in ev),
    "after a retrain, before the next proposal": lambda ev: ev and ev[-1][0] == "retrain_finished",
    "mid-synthesis of a BoTorch round": lambda ev: ev and ev[-1][0] == "dispatched" and (ev[-1][1] or 0) >= 1,
}


@pytest.mark.slow
def test_sigkill_at_five_points_then_resume_loses_and_duplicates_nothing(tmp_path, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    config = write_config(tmp_path, budget=6, retrain_every_rounds=1, retrain_minutes=0.1, tolerance=0.001)
    config.write_text(config.read_text().replace("retrain_every_rounds = 0\n", ""))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the harness's API: no server start per run
    db = tmp_path / "run" / "ledger.sqlite"
    command = ["campaign", "start", str(config)]
    for point, reached in KILL_POINTS.items():
        seen = len(_events(db))
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *command], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[2], env=env)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            events = _events(db)
            if len(events) > seen and reached(events):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the campaign ended before it could be killed {point}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        command = ["campaign", "resume", str(tmp_path / "run")]
    result = invoke("campaign", "resume", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr

    from flows.run_store import RunStore

    status, events, rows = finished_campaign(tmp_path / "run")
    assert status["proposed"] == 6
    # the two mid-synthesis kills left interrupted samples: requeued, never taken as results
    requeued = events[events["kind"] == "requeued"]
    assert len(requeued) >= 2
    interrupted = {p["sample_id"] for p in requeued["payload"]}
    assert not interrupted & {r["sample_id"] for r in rows if r["state"] == "completed"}
    sample_ids = [s for r in rows for s in r["sample_ids"]]
    assert len(sample_ids) == len(set(sample_ids))                  # no sample id dispatched twice
    # the interrupted fine-tune was run again: every retrain that started also finished
    unfinished = set()
    for kind, rnd in zip(events["kind"], events["round"]):
        if kind == "retrain_started":
            unfinished.add(rnd)
        elif kind == "retrain_finished":
            unfinished.discard(rnd)
    kinds = list(events["kind"])
    assert not unfinished and kinds.count("retrain_started") == kinds.count("retrain_finished") + 1
    store = RunStore.open(tmp_path / "run")
    try:
        for r in rows:
            if r["state"] == "completed":
                assert store.run_summary(r["run_uid"])["sample_id"] == r["sample_id"]
                assert all(Path(p).is_file() for p in r["images"])
        tiled_samples = {store.run_summary(uid)["sample_id"] for uid in store.runs()}
    finally:
        store.close()
    assert tiled_samples <= set(sample_ids)                         # Tiled holds no run the ledger does not know


def test_campaign_completes_under_injected_faults_and_records_them(tmp_path, prefect_harness):
    path = write_config(tmp_path, budget=4)
    path.write_text(path.read_text() + "\n[devices]\nfault_rate = 0.15\n")
    result = invoke("campaign", "start", path, "--json")
    assert result.exit_code == 0, result.stderr
    status, events, rows = finished_campaign(tmp_path / "run")
    assert status["failures"] > 0                                   # some device operations did fail
    failed = events[events["kind"] == "failed"]
    assert all("fault" in str(p) or "fail" in str(p) for p in failed["payload"])   # each with its reason
    assert all(r["attempts"] <= 3 for r in rows)                    # retries are bounded (max_attempts)
