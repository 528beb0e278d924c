"""The closed loop as a Prefect flow: propose -> dispatch -> ingest -> describe -> record -> retrain -> repeat.

One round, as data (each arrow is a ledger transaction, so a kill anywhere loses nothing):

1. **propose** (task ``propose-batch``): round 0 takes the best distinct candidates of a particle swarm over the
   surrogate (paper 000, SI §1.2.4); later rounds let BoTorch choose among those candidates, conditions drawn
   near the best measured samples (``local_candidates``: the surrogate's bias does not trap the search at the
   swarm's points) and random ones (``random_candidates``: exploration where the surrogate is blind), with a GP
   fitted to the *measured* descriptors (residuals over the surrogate's prediction, composite eq.-3 objective
   inside qLogNEI). The batch is written to the ledger before anything moves.
2. **dispatch + ingest** (task ``run-experiment``, tag ``reactor`` with a concurrency limit of 1): a new sample
   id per attempt is written to the ledger (``dispatched``), the ``synthesize_and_image`` plan runs on the
   RunEngine, the images are described with ``describe``'s pipeline and the result is written (``completed``).
   A device fault writes ``failed`` with its reason; Prefect retries the task, each retry a new attempt with a
   new sample id, at most ``max_attempts`` in all.
3. **retrain** (subflow ``surrogate-fine-tune``) every ``retrain_every_rounds`` rounds on the measured images.
4. Stop when a measured sample meets the target within tolerance, or the experiment or time budget is spent.

Resume (``morphloop campaign resume DIR``): the ledger's :meth:`~loop.ledger.Ledger.recover` requeues (or
abandons) experiments left in flight, pending ones are dispatched before anything new is proposed, the swarm's
candidates come back from ``pso_candidates.json`` and the surrogate from the last finished retrain; a fine-tune
the kill interrupted is run again, whole, before anything else.

Human in the loop (``approve``): before dispatch the flow pauses (:func:`approve_batch`) until an operator answers
with ``morphloop campaign approve DIR`` or the Prefect UI, or ``approve_timeout_s`` passes; then the batch stays
proposed and the campaign stops with reason "approval timed out" (``campaign resume`` asks again).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from flows.dispatch import DispatchError, InProcessDispatcher, describe_images
from flows.simulate import DocumentLog
from loop.campaign_config import CampaignConfig
from loop.config import DESCRIPTORS
from loop.ledger import Ledger, sample_id_for
from loop.objective import Objective, Target, target_from_description
from loop.predictor import CachedPredictor
from loop.proposer import propose_batch, spread_batch
from loop.pso import known_starts, run_pso
from models.describe import Describer
from models.surrogate.model import DEFAULT_MODEL_DIR
from models.surrogate.predictor import SurrogatePredictor

PSO_FILE = "pso_candidates.json"
DOCUMENTS_FILE = "documents.jsonl"
SUMMARY_FILE = "campaign_summary.json"
#: Written while a campaign waits for an operator: the flow run, the API that holds it, the batch.
APPROVAL_FILE = "approval_request.json"


@dataclass
class Campaign:
    """Everything a running campaign holds (rebuilt from disk on resume)."""

    config: CampaignConfig
    data_dir: Path
    ledger: Ledger
    objective: Objective
    predictor: CachedPredictor
    dispatcher: Any
    describer: Describer = field(default_factory=Describer)
    n_images: int = 2
    started: float = field(default_factory=time.monotonic)
    progress: Callable[[str, dict], None] | None = None
    #: Ask an operator before each dispatch; ``None`` follows the config (``campaign resume --approve`` overrides
    #: it here, not in the config, whose snapshot identifies the campaign).
    approve: bool | None = None

    @property
    def space(self):
        return self.config.space()


# ------------------------------------------------------------------------------------------------ set-up
def resolve_target(config: CampaignConfig, describer: Describer) -> Target:
    """The numeric target, or the descriptors ``describe`` measures on the reference image."""
    target = config.objective_target()
    if target is not None:
        return target
    reference = describer.describe(config.target.reference_image, config.target.pixel_size_um).record()
    return target_from_description(reference, tolerance=config.tolerance)


def load_predictor(model_dir: str | Path | None, steps: int | None = None) -> CachedPredictor:
    return CachedPredictor(SurrogatePredictor.from_pretrained(model_dir or DEFAULT_MODEL_DIR, steps=steps))


def open_campaign(config: CampaignConfig, *, dispatcher=None, surrogate_steps: int | None = None,
                  n_images: int = 2, progress=None) -> Campaign:
    """Open (or create) the campaign in ``config.data_dir``: ledger, devices, surrogate, objective."""
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(data_dir)
    ledger.start_campaign(config.snapshot(), campaign_id=config.name or "campaign")
    describer = Describer()
    target = resolve_target(config, describer)
    objective = Objective(target, config.weights.as_tuple())
    model_dir = ledger.current_model_dir() or config.model_dir
    if dispatcher is None:
        log = DocumentLog(data_dir / DOCUMENTS_FILE)
        subscribers = [log]
        from flows.run_store import open_run_store

        if (store := open_run_store(data_dir)) is not None:  # None without Tiled: documents.jsonl only
            subscribers.append(store.writer)
        from simulators.faults import FaultInjector

        faults = FaultInjector(rate=config.devices.fault_rate, seed=config.seed)
        dispatcher = InProcessDispatcher(data_dir / "lab", seed=config.seed, faults=faults, subscribers=subscribers)
    return Campaign(config, data_dir, ledger, objective, load_predictor(model_dir, surrogate_steps), dispatcher,
                    describer, n_images, progress=progress)


# --------------------------------------------------------------------------------------------- proposals
def swarm_candidates(campaign: Campaign, refresh: bool = False) -> list[dict]:
    """The particle swarm's ranked candidates over the current surrogate (cached in ``pso_candidates.json``)."""
    path = campaign.data_dir / PSO_FILE
    model = campaign.ledger.current_model_dir() or str(campaign.config.model_dir or DEFAULT_MODEL_DIR)
    if path.is_file() and not refresh:
        cached = json.loads(path.read_text())
        if cached.get("model") == model:
            return cached["candidates"]
    result = run_pso(campaign.predictor, campaign.space, campaign.objective, n_particles=campaign.config.pso.particles,
                     iters=campaign.config.pso.iters, n_images=campaign.n_images, seed=campaign.config.seed,
                     top_k=max(4 * campaign.config.batch_size, 16), stop_when_met=False,
                     init_conditions=known_starts(campaign.predictor, campaign.objective,
                                                  campaign.config.pso.particles // 2, campaign.space.fixed),
                     progress=(lambda i, best: campaign.progress("pso", {"iteration": i, "objective": best.objective}))
                     if campaign.progress else None)
    candidates = [c.to_dict() for c in result.candidates]
    payload = {"model": model, "evaluations": result.evaluations, "wall_time_s": result.wall_time_s,
               "candidates": candidates}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    return candidates


def measured(campaign: Campaign) -> tuple[list[dict], np.ndarray]:
    """Conditions and descriptors (``n x 4``) of every completed experiment."""
    rows = [campaign.ledger.experiment(e) for e in campaign.ledger.completed()]
    x = [r["conditions"] for r in rows]
    y = np.array([[np.nan if r["descriptors"].get(k) is None else r["descriptors"][k] for k in DESCRIPTORS]
                  for r in rows], float).reshape(len(rows), len(DESCRIPTORS))
    return x, y


@task(name="propose-batch", cache_policy=NO_CACHE)
def propose_task(campaign: Campaign, round: int, q: int) -> list[dict]:
    """The round's batch: ``[{"conditions", "predicted", "source"}]`` (never run here)."""
    candidates = swarm_candidates(campaign)
    x, y = measured(campaign)
    done = {json.dumps(c, sort_keys=True) for c in x}
    fresh = [c for c in candidates if json.dumps(c["conditions"], sort_keys=True) not in done]
    good = ~np.isnan(y).any(axis=1) if len(y) else np.zeros(0, bool)
    if good.sum() < 2:
        spread = spread_batch(campaign.space, [c["conditions"] for c in fresh], q)
        chosen = [{"conditions": fresh[i]["conditions"], "predicted": fresh[i]["descriptors"], "source": "pso"}
                  for i in spread]
    else:
        try:
            picks = propose_batch([c for c, g in zip(x, good) if g], y[good], campaign.space, campaign.objective,
                                  q=q, candidate_set=[c["conditions"] for c in fresh],
                                  prior_predictor=campaign.predictor, seed=campaign.config.seed + round,
                                  n_images=campaign.n_images, n_local=campaign.config.local_candidates,
                                  n_random=campaign.config.random_candidates)
            source = "botorch"
        except ValueError as exc:  # e.g. a descriptor the surrogate cannot measure on its tiles: no GP for it
            get_run_logger().warning("BoTorch proposal failed (%s); taking the swarm's next candidates", exc)
            picks, source = [c["conditions"] for c in fresh[:q]], "pso"
        predicted = {json.dumps(c["conditions"], sort_keys=True): c["descriptors"] for c in candidates}
        others = [p for p in picks if json.dumps(p, sort_keys=True) not in predicted]
        if others and source == "botorch":  # local picks: the prior's predictions, cached by propose_batch
            for p, pred in zip(others, campaign.predictor.predict(others, n_images=campaign.n_images,
                                                                  seed=campaign.config.seed + round)):
                predicted[json.dumps(p, sort_keys=True)] = dict(pred.descriptors)  # the ledger stores NaN as null
        chosen = [{"conditions": p, "predicted": predicted.get(json.dumps(p, sort_keys=True)), "source": source}
                  for p in picks]
    if len(chosen) < q:  # the swarm ran dry: fill with feasible random conditions, marked as such
        rng = np.random.default_rng(campaign.config.seed + 1000 + round)
        chosen += [{"conditions": c, "predicted": None, "source": "random"}
                   for c in campaign.space.sample(q - len(chosen), rng)]
    return chosen


# ------------------------------------------------------------------------------------------- experiments
@task(name="run-experiment", tags=["reactor"], cache_policy=NO_CACHE, retries=0)
def run_experiment_task(campaign: Campaign, experiment_id: str) -> dict:
    """Dispatch one experiment until it completes or its attempts are spent; every attempt is in the ledger.

    Retries are bounded by ``max_attempts`` and counted in the ledger (not in Prefect's memory), so a resumed
    campaign knows how many an experiment already had.
    """
    ledger, config = campaign.ledger, campaign.config
    logger = get_run_logger()
    while True:
        exp = ledger.experiment(experiment_id)
        attempt = exp["attempts"] + 1
        sample_id = sample_id_for(experiment_id, attempt)
        ledger.mark_dispatched(experiment_id, sample_id, attempt)
        try:
            result = campaign.dispatcher.run(exp["conditions"], sample_id,
                                             {"experiment_id": experiment_id, "campaign_id": ledger.campaign_id,
                                              "attempt": attempt})
            descriptors = describe_images(campaign.describer, result.images)
        except (DispatchError, ValueError) as exc:
            retryable = getattr(exc, "retryable", False) and attempt < config.max_attempts
            ledger.mark_failed(experiment_id, str(exc), attempt, retryable=retryable)
            logger.warning("%s attempt %d failed: %s", experiment_id, attempt, exc)
            if retryable:
                continue
            return {"experiment_id": experiment_id, "state": "failed", "reason": str(exc)}
        ledger.mark_completed(experiment_id, descriptors, [result.images["low"], result.images["high"]],
                              run_uid=result.run_uid)
        return {"experiment_id": experiment_id, "state": "completed", "descriptors": descriptors,
                "sample_id": sample_id}


# ------------------------------------------------------------------------------------------ human in the loop
class BatchDecision(RunInput):
    """The operator's answer to a paused campaign (Prefect UI: *Resume* shows this form).

    Every experiment of the batch that is neither skipped nor edited is approved, so an empty form approves the
    batch. ``edit`` maps an experiment id to the conditions to change (the others keep their proposed values).
    """

    skip: list[str] = []
    edit: dict[str, dict[str, Any]] = {}
    by: str = ""
    note: str = ""


class ApprovalTimeout(RuntimeError):
    """Nobody answered within ``approve_timeout_s``; the batch stays proposed (``campaign resume`` asks again)."""


def check_decision(campaign: Campaign, waiting: list[str], decision: BatchDecision) -> list[str]:
    """Problems with an operator's decision, each naming the experiment and the fix (empty when usable)."""
    problems = [f"skip: {e!r} is not waiting for approval (waiting: {waiting})" for e in decision.skip
                if e not in waiting]
    for eid, change in decision.edit.items():
        if eid not in waiting:
            problems.append(f"edit: {eid!r} is not waiting for approval (waiting: {waiting})")
            continue
        unknown = sorted(set(change) - set(campaign.space.names))
        if unknown:
            problems.append(f"edit {eid}: unknown condition(s) {unknown}; editable: {list(campaign.space.names)}")
            continue
        conditions = {**campaign.ledger.experiment(eid)["conditions"], **change}
        if not campaign.space.is_feasible(conditions):
            problems.append(f"edit {eid}: {change} is outside the search space or its NaOH/NH4OH ratio window; "
                            f"see the campaign config's [space]")
    return problems


def approve_batch(campaign: Campaign, round: int, pending: list[str]) -> list[str]:
    """Pause the flow until an operator approves, edits or skips the experiments not yet decided.

    The decision arrives as :class:`BatchDecision` run input (``prefect flow-run resume`` or the UI), within
    ``approve_timeout_s`` (explicit: Prefect's own default would fail the run after an hour). Every decision is a
    ledger ``approval`` event; skipped experiments are abandoned with the operator's reason. A decision that
    does not fit the batch is refused (logged) and the flow pauses again. Returns the experiments to dispatch.
    """
    ledger, config = campaign.ledger, campaign.config
    logger = get_run_logger()
    waiting = [e for e in pending if ledger.experiment(e)["approval"] is None]
    attempt = 0
    while waiting:
        rows = [ledger.experiment(e) for e in waiting]
        create_markdown_artifact(
            key=f"campaign-approval-round-{round}",
            markdown="\n".join([f"### Round {round}: waiting for approval", "", "| experiment | conditions |",
                                "| --- | --- |"] + [f"| {r['experiment_id']} | `{json.dumps(r['conditions'])}` |"
                                                   for r in rows]),
            description="Resume the flow run with skip / edit lists (an empty form approves the batch)")
        logger.warning("round %d: waiting up to %.0f s for an operator to approve %s (resume this flow run; "
                       "an empty form approves them)", round, config.approve_timeout_s, waiting)
        if campaign.progress:
            campaign.progress("approval", {"round": round, "waiting": waiting})
        attempt += 1
        _write_approval_request(campaign, round, rows)
        try:
            decision = pause_flow_run(wait_for_input=BatchDecision, timeout=int(math.ceil(config.approve_timeout_s)),
                                      poll_interval=max(1, min(10, int(config.approve_timeout_s // 4))),
                                      key=f"approve-round-{round}-{ledger.status()['proposed']}-{attempt}")
        except FlowPauseTimeout as exc:
            raise ApprovalTimeout(f"round {round}: no decision on {waiting} within {config.approve_timeout_s:.0f} s; "
                                  "they stay proposed: run `morphloop campaign resume DIR` to be asked again") from exc
        problems = check_decision(campaign, waiting, decision)
        if problems:
            logger.error("decision refused, asking again: %s", "; ".join(problems))
            continue
        for eid in waiting:
            if eid in decision.skip:
                ledger.record_approval(eid, "skip", by=decision.by, note=decision.note)
            elif eid in decision.edit:
                conditions = {**ledger.experiment(eid)["conditions"], **decision.edit[eid]}
                ledger.record_approval(eid, "edit", conditions, by=decision.by, note=decision.note)
            else:
                ledger.record_approval(eid, "approve", by=decision.by, note=decision.note)
        waiting = []
    (campaign.data_dir / APPROVAL_FILE).unlink(missing_ok=True)
    return [e for e in pending if ledger.state_of(e) != "abandoned"]


def _write_approval_request(campaign: Campaign, round: int, rows: list[dict]) -> None:
    """What ``morphloop campaign approve DIR`` needs to answer: this flow run and the API holding it (a
    temporary local server's port changes from run to run)."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    context = FlowRunContext.get()
    request = {"flow_run_id": str(context.flow_run.id) if context else None, "api_url": PREFECT_API_URL.value(),
               "round": round, "deadline_s": campaign.config.approve_timeout_s, "requested_at": time.time(),
               "experiments": [{"experiment_id": r["experiment_id"], "conditions": r["conditions"],
                                "predicted": r["predicted"]} for r in rows]}
    path = campaign.data_dir / APPROVAL_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(request, indent=1, default=str))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------- retraining
@task(name="retrain-surrogate", cache_policy=NO_CACHE)
def retrain_task(campaign: Campaign, round: int, minutes: float) -> str:
    """Fine-tune the surrogate on the measured images (a new model folder per round)."""
    from flows.surrogate_data import tiles_from_frames
    from flows.surrogate_flow import fine_tune_surrogate

    ledger = campaign.ledger
    model_in = ledger.current_model_dir() or str(campaign.config.model_dir or DEFAULT_MODEL_DIR)
    model_out = campaign.data_dir / "models" / f"round_{round:03d}"
    ledger.retrain_started(round, model_out)
    rows = [ledger.experiment(e) for e in ledger.completed()]
    tiles = tiles_from_frames([(r["conditions"], r["images"]) for r in rows])
    metrics = fine_tune_surrogate(model_in, tiles, str(model_out), minutes=minutes, seed=campaign.config.seed + round)
    ledger.retrain_finished(round, model_out, metrics)
    campaign.predictor = load_predictor(model_out, campaign.predictor.predictor.steps)
    return str(model_out)


# ------------------------------------------------------------------------------------------------ the flow
def best_so_far(campaign: Campaign) -> dict | None:
    """The completed experiment with the lowest objective (with its residuals)."""
    best = None
    for eid in campaign.ledger.completed():
        row = campaign.ledger.experiment(eid)
        d = {k: (np.nan if row["descriptors"].get(k) is None else row["descriptors"][k]) for k in DESCRIPTORS}
        f = float(campaign.objective(d)[0])
        if not math.isfinite(f):
            continue
        if best is None or f < best["objective"]:
            best = {"experiment_id": eid, "conditions": row["conditions"], "descriptors": row["descriptors"],
                    "objective": f, "met": campaign.objective.target_met(d),
                    "residuals": campaign.objective.residuals(d), "images": row["images"],
                    "sample_id": row["sample_id"]}
    return best


def _round_artifact(campaign: Campaign, round: int, results: list[dict]) -> None:
    lines = [f"### Round {round}", "", "| experiment | state | D50 µm | Ψ mean | Ψ std | texture |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        d = r.get("descriptors") or {}
        cells = [f"{d[k]:.3f}" if isinstance(d.get(k), (int, float)) else "-" for k in DESCRIPTORS]
        lines.append(f"| {r['experiment_id']} | {r['state']} | " + " | ".join(cells) + " |")
    best = best_so_far(campaign)
    if best:
        lines += ["", f"Best so far: {best['experiment_id']} (objective {best['objective']:.4f}, "
                      f"target met: {best['met']})"]
    create_markdown_artifact(key=f"campaign-round-{round}", markdown="\n".join(lines),
                             description=f"Round {round} of {campaign.ledger.campaign_id}")


def _stop_reason(campaign: Campaign) -> str | None:
    status = campaign.ledger.status()
    best = best_so_far(campaign)
    if best and best["met"]:
        return "target met"
    if status["proposed"] >= campaign.config.budget.experiments and not campaign.ledger.pending():
        return "experiment budget spent"
    if (time.monotonic() - campaign.started) / 3600.0 >= campaign.config.budget.hours:
        return "time budget spent"
    return None


def limit_reactor_concurrency(logger) -> None:
    """One experiment at a time on the reactor: a tag concurrency limit of 1 on ``reactor`` (the tag of
    ``run-experiment``), so campaigns sharing a Prefect server never dispatch two syntheses at once."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.create_concurrency_limit(tag="reactor", concurrency_limit=1)
    except Exception as exc:  # an API without the limit still runs the campaign (its experiments are sequential)
        logger.warning("could not set the 'reactor' concurrency limit: %s", exc)


FLOW_RUNS_FILE = "prefect_flow_runs.json"


def release_stale_reactor_slots(campaign: Campaign, logger) -> int:
    """Give back ``reactor`` slots that no live task run holds: those of killed campaigns.

    A SIGKILL leaves the killed task's slot (and its flow run "Running") on the Prefect server; a temporary local
    server does not repossess expired leases, so every later campaign on it would wait for the reactor forever.
    Called at the start of each campaign flow run, after :meth:`Ledger.recover` (nothing of this campaign is in
    flight): the limit is set back to the slots that listed (live, lease-renewing) task runs of *other* flow runs
    hold, and this campaign's killed flow runs (``prefect_flow_runs.json``) are marked Crashed. Returns the
    number of slots released. (A campaign that acquires the reactor in the instant between the read and the
    reset would lose its slot count, not its experiment.)
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.states import Crashed

    path = campaign.data_dir / FLOW_RUNS_FILE
    ours = set(json.loads(path.read_text())) if path.is_file() else set()
    try:
        with get_client(sync_client=True) as client:
            killed = [r for r in ours if (state := client.read_flow_run(r).state) is not None and not state.is_final()]
            # Live holders renew their lease and are listed; a dead holder's expired lease is not listed but its
            # slot stays counted: keep only the listed holders of other flow runs.
            holders = [str(h) for h in client.read_concurrency_limit_by_tag("reactor").active_slots]
            keep = [h for h in holders if str(client.read_task_run(h).flow_run_id) not in ours]
            active = client.read_global_concurrency_limit_by_name("tag:reactor").active_slots
            released = max(active - len(keep), 0)
            if released:
                client.reset_concurrency_limit_by_tag("reactor", slot_override=keep)
                client.update_global_concurrency_limit("tag:reactor", GlobalConcurrencyLimitUpdate(
                    active_slots=len(keep)))
                logger.warning("released %d reactor slot(s) that no live task run holds (killed runs: %s)",
                               released, killed or "of other campaigns")
            for run_id in killed:
                client.set_flow_run_state(run_id, Crashed(message="the campaign process was killed; continued by "
                                                          "`morphloop campaign resume`"), force=True)
    except Exception as exc:  # an API without these endpoints: the lease expires on its own
        logger.warning("could not release stale reactor slots: %s", exc)
        return 0
    return released


def _record_flow_run(campaign: Campaign) -> None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None:
        return
    path = campaign.data_dir / FLOW_RUNS_FILE
    runs = json.loads(path.read_text()) if path.is_file() else []
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs + [str(context.flow_run.id)]))
    tmp.replace(path)


@flow(name="campaign")
def run_campaign(campaign: Campaign, retrain_minutes: float = 0.5) -> dict:
    """Run rounds until the target is met or the budget is spent; returns the campaign summary."""
    logger = get_run_logger()
    ledger, config = campaign.ledger, campaign.config
    limit_reactor_concurrency(logger)
    recovered = ledger.recover(config.interrupted_policy, config.max_attempts)
    if recovered["requeued"] or recovered["abandoned"]:
        logger.warning("resumed: requeued %s, abandoned %s", recovered["requeued"], recovered["abandoned"])
    release_stale_reactor_slots(campaign, logger)
    _record_flow_run(campaign)
    reason = None if not ledger.is_finished() else "finished earlier"
    interrupted = ledger.retrain_in_progress()
    if reason is None and interrupted is not None:  # killed mid-fine-tune: do that fine-tune again, whole
        logger.warning("resumed: the fine-tune after round %d was interrupted; running it again", interrupted)
        retrain_task(campaign, interrupted, retrain_minutes)
        swarm_candidates(campaign, refresh=True)
    while reason is None:
        reason = _stop_reason(campaign)
        if reason:
            break
        pending = ledger.pending()
        if pending:
            round = ledger.last_round() or 0
        else:
            round = (ledger.last_round() + 1) if ledger.last_round() is not None else 0
            left = config.budget.experiments - ledger.status()["proposed"]
            batch = propose_task(campaign, round, min(config.batch_size, left))
            pending = ledger.propose(round, batch)
        if config.approve if campaign.approve is None else campaign.approve:
            try:
                pending = approve_batch(campaign, round, pending)
            except ApprovalTimeout as exc:
                logger.error("%s", exc)
                reason = "approval timed out"
                break
        results = []
        for eid in pending:
            if campaign.progress:
                campaign.progress("dispatch", {"experiment_id": eid, "round": round})
            results.append(run_experiment_task(campaign, eid))
            if campaign.progress:
                campaign.progress("result", results[-1])
        _round_artifact(campaign, round, results)
        due = config.retrain_every_rounds and (round + 1) % config.retrain_every_rounds == 0
        if due and _stop_reason(campaign) is None and ledger.completed():
            retrain_task(campaign, round, retrain_minutes)
            swarm_candidates(campaign, refresh=True)
    best = best_so_far(campaign)
    if not ledger.is_finished() and reason != "approval timed out":  # a timed-out batch waits for `resume`
        ledger.finish(reason, bool(best and best["met"]))
    summary = {"campaign_id": ledger.campaign_id, "reason": reason, "met": bool(best and best["met"]),
               "experiments": ledger.status()["completed"] + ledger.status()["failed"], "status": ledger.status(),
               "best": best, "data_dir": str(campaign.data_dir), "target": campaign.objective.target.as_dict()}
    (campaign.data_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str))
    return summary


@flow(name="campaign-from-config")
def campaign_from_config(config: str, data_dir: str | None = None, resume: bool = False) -> dict:
    """Deployment entry point (JSON parameters, for a work pool): start the campaign of the TOML ``config``, or
    with ``resume`` continue the one in ``data_dir`` (its config comes from its ledger)."""
    from loop.campaign_config import load_campaign_config

    if resume:
        if data_dir is None:
            raise ValueError("resume=True needs data_dir (the campaign folder)")
        with Ledger(data_dir, create=False) as ledger:
            snapshot = ledger.config()
        loaded = load_campaign_config(snapshot)
    else:
        import tomllib

        raw = tomllib.loads(Path(config).read_text())
        loaded = load_campaign_config({**raw, **({"data_dir": data_dir} if data_dir else {})})
    campaign = open_campaign(loaded, surrogate_steps=loaded.surrogate_steps, n_images=loaded.images_per_condition)
    return run_campaign(campaign, retrain_minutes=loaded.retrain_minutes)
