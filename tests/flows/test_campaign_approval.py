"""Human in the loop: a campaign with ``approve`` pauses before dispatch and takes approve / edit / skip."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tests.flows.test_campaign import invoke, write_config


def _run_in_thread(config_path: Path) -> tuple[threading.Thread, dict]:
    from flows.campaign import open_campaign, run_campaign
    from loop.campaign_config import load_campaign_config

    config = load_campaign_config(config_path)
    out: dict = {}

    def target():
        try:
            campaign = open_campaign(config, surrogate_steps=config.surrogate_steps,
                                     n_images=config.images_per_condition)
            out["summary"] = run_campaign(campaign)
        except BaseException as exc:  # reported by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_approve_edit_and_skip_are_recorded_and_obeyed(tmp_path, prefect_harness):
    config = write_config(tmp_path, budget=2, approve=True, approve_timeout_s=300)
    thread, out = _run_in_thread(config)
    request_file = tmp_path / "run" / "approval_request.json"
    deadline = time.monotonic() + 900
    while not request_file.exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert request_file.exists(), out.get("error")
    request = json.loads(request_file.read_text())
    first, second = (e["experiment_id"] for e in request["experiments"])
    # nothing is dispatched while the operator decides
    from loop.ledger import Ledger

    with Ledger(tmp_path / "run", create=False) as ledger:
        assert ledger.status()["dispatched"] == 0

    bad = invoke("campaign", "approve", tmp_path / "run", "--skip", "no-such-experiment")
    assert bad.exit_code == 2 and "no-such-experiment" in bad.stderr
    result = invoke("campaign", "approve", tmp_path / "run", "--skip", first, "--edit", f'{second}={{"ph": 10.9}}',
                    "--by", "night-shift", "--note", "pH too low for this reactor", "--json")
    assert result.exit_code == 0, result.stderr
    thread.join(900)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    assert not request_file.exists()
    with Ledger(tmp_path / "run", create=False) as ledger:
        skipped, edited = ledger.experiment(first), ledger.experiment(second)
        events = ledger.events()
    assert skipped["state"] == "abandoned" and skipped["approval"] == "skip" and skipped["attempts"] == 0
    assert "night-shift" in skipped["reason"] and "pH too low" in skipped["reason"]
    assert edited["approval"] == "edit" and edited["conditions"]["ph"] == 10.9
    assert edited["state"] in ("completed", "failed") and edited["attempts"] >= 1
    approvals = events[events["kind"] == "approval"]
    assert len(approvals) == 2


def test_approval_timeout_keeps_the_batch_for_resume(tmp_path, prefect_harness):
    config = write_config(tmp_path, budget=2, approve=True, approve_timeout_s=3)
    result = invoke("campaign", "start", config, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["reason"] == "approval timed out" and summary["experiments"] == 0
    from loop.ledger import Ledger

    with Ledger(tmp_path / "run", create=False) as ledger:
        status = ledger.status()
        assert status["state"] != "finished" and status["proposed"] == 2 and status["dispatched"] == 0
        assert len(ledger.pending()) == 2
    # nobody answered: resume without approval runs the same batch (nothing lost, nothing proposed twice)
    result = invoke("campaign", "resume", tmp_path / "run", "--no-approve", "--json")
    assert result.exit_code == 0, result.stderr
    with Ledger(tmp_path / "run", create=False) as ledger:
        status = ledger.status()
    assert status["state"] == "finished" and status["proposed"] == 2 and status["duplicates"] == 0
    assert status["completed"] + status["failed"] == 2
