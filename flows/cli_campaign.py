"""``morphloop dry-run`` and ``morphloop campaign start | resume | status | report``.

``--json`` output goes to stdout (one object) and nothing else does; progress and logs go to stderr.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional
from uuid import UUID

import typer

campaign_app = typer.Typer(help="Closed-loop campaigns: propose, dispatch, describe, retrain.", no_args_is_help=True)

#: The dry run's target: the virtual lab's morphology at conditions the optimiser is not told
#: (pH 10.8, NaOH 1.5 wt%, NH4OH 0.8 wt%, 480 min, 45 °C, 900 rpm, N2, 500 ppm): reachable by construction.
DRY_RUN_TARGET = {"d50_um": 3.44, "sphericity_mean": 0.89, "texture": 0.57}


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _console():
    from rich.console import Console

    return Console(file=sys.stderr)


def _run(config, *, as_json: bool, approve: bool | None = None) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.campaign import open_campaign, run_campaign
    from flows.campaign_report import write_report
    from loop.ledger import LedgerError

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=_console(), transient=False) as progress:
        swarm = progress.add_task("swarm over the surrogate", total=config.pso.iters, info="")
        runs = progress.add_task("experiments", total=config.budget.experiments, info="")

        def report(kind: str, info: dict) -> None:
            if kind == "pso":
                progress.update(swarm, completed=info["iteration"], info=f"best F {info['objective']:.4f}")
            elif kind == "dispatch":
                progress.update(runs, info=f"running {info['experiment_id']}")
            elif kind == "approval":
                progress.console.print(f"round {info['round']}: waiting for approval of {info['waiting']}: run "
                                       f"`morphloop campaign approve {config.data_dir}` (add --skip / --edit), "
                                       "or resume the flow run in the Prefect UI")
            elif kind == "result":
                d = info.get("descriptors") or {}
                text = (f"{info['experiment_id']}: D50 {d.get('d50_um') or float('nan'):.2f} µm, "
                        f"texture {d.get('texture') or float('nan'):.2f}") if d else f"{info['experiment_id']} failed"
                progress.advance(runs)
                progress.update(runs, info=text)

        try:
            campaign = open_campaign(config, surrogate_steps=config.surrogate_steps,
                                     n_images=config.images_per_condition, progress=report)
            campaign.approve = approve
            done = campaign.ledger.status()
            progress.update(runs, completed=done["completed"] + done["failed"])
            summary = run_campaign(campaign, retrain_minutes=config.retrain_minutes)
        except LedgerError as exc:
            _err(f"error: {exc}")
            raise typer.Exit(2)
    report_path = write_report(config.data_dir)
    summary["report"] = str(report_path)
    best = summary.get("best") or {}
    result = {"met": summary["met"], "experiments": summary["experiments"],
              "best": {"conditions": best.get("conditions"), "descriptors": best.get("descriptors")},
              "data_dir": str(config.data_dir), "report": str(report_path), "reason": summary["reason"],
              "status": summary["status"]}
    if as_json:
        typer.echo(json.dumps(result, default=str))
    _err(f"campaign {summary['campaign_id']}: {summary['reason']} after {summary['experiments']} experiments; "
         f"target met: {summary['met']}")
    _err(f"results: {config.data_dir} (ledger.sqlite, documents.jsonl, tiled/); report: {report_path}")
    return result


def _load(source, overrides: dict | None = None):
    from loop.campaign_config import CampaignConfigError, load_campaign_config

    try:
        if overrides:
            if isinstance(source, (str, Path)):
                import tomllib

                raw = tomllib.loads(Path(source).read_text())
            else:
                raw = dict(source)
            source = {**raw, **overrides}
        return load_campaign_config(source)
    except CampaignConfigError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)
    except (OSError, ValueError) as exc:
        _err(f"error: cannot read the campaign config {source}: {exc}")
        raise typer.Exit(2)


def dry_run(
    data_dir: Path = typer.Option(Path("data/dry-run"), "--data-dir", help="Campaign folder (new or to resume)."),
    target_d50_um: Optional[float] = typer.Option(None, "--target-d50-um", help="Target D50 (µm)."),
    target_sphericity: Optional[float] = typer.Option(None, "--target-sphericity", help="Target mean sphericity."),
    target_texture: Optional[float] = typer.Option(None, "--target-texture", help="Target texture [0, 1]."),
    budget: int = typer.Option(16, "--budget", help="Experiments at most."),
    batch: int = typer.Option(4, "--batch", help="Experiments per round."),
    seed: int = typer.Option(0, "--seed"),
    model: Optional[Path] = typer.Option(None, "--model", help="Surrogate folder (default: the shipped model)."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object on stdout."),
) -> None:
    """A complete closed-loop campaign against the simulators on embedded defaults (what `make run` runs)."""
    target = dict(DRY_RUN_TARGET)
    for key, value in (("d50_um", target_d50_um), ("sphericity_mean", target_sphericity),
                       ("texture", target_texture)):
        if value is not None:
            target[key] = value
    config = _load({"name": "dry-run", "data_dir": str(data_dir.resolve()), "target": target,
                    "batch_size": batch, "budget": {"experiments": budget, "hours": 1.0},
                    "retrain_every_rounds": 2, "pso": {"particles": 10, "iters": 6}, "seed": seed,
                    "surrogate_steps": 6, "images_per_condition": 2, "retrain_minutes": 0.5,
                    **({"model_dir": str(model.resolve())} if model else {})})
    _run(config, as_json=as_json)


@campaign_app.command("start")
def start(
    config_path: Path = typer.Argument(..., help="Campaign config (TOML)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Override the config's data_dir."),
    approve: bool = typer.Option(False, "--approve", help="Pause before each batch for approve / edit / skip "
                                 "(answer with `morphloop campaign approve DIR`)."),
    approve_timeout_s: Optional[float] = typer.Option(None, "--approve-timeout-s",
                                                      help="Seconds to wait for a decision (default: config, 900)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start a campaign from a TOML config (a folder holding a finished campaign is refused)."""
    overrides = {"data_dir": str(data_dir.resolve())} if data_dir else {}
    if approve:
        overrides["approve"] = True
    if approve_timeout_s is not None:
        overrides["approve_timeout_s"] = approve_timeout_s
    config = _load(config_path, overrides or None)
    if (Path(config.data_dir) / "ledger.sqlite").exists():
        _err(f"error: {config.data_dir} already holds a campaign; continue it with "
             f"'morphloop campaign resume {config.data_dir}' or choose another --data-dir")
        raise typer.Exit(2)
    _run(config, as_json=as_json)


@campaign_app.command("resume")
def resume(
    data_dir: Path = typer.Argument(..., help="The campaign folder."),
    approve: Optional[bool] = typer.Option(None, "--approve/--no-approve",
                                           help="Override the campaign's approval setting from now on."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Continue a campaign after a crash or kill: nothing lost, nothing dispatched twice."""
    snapshot = _snapshot(data_dir)
    _run(_load(snapshot), as_json=as_json, approve=approve)


@campaign_app.command("approve")
def approve_cmd(
    data_dir: Path = typer.Argument(..., help="The campaign folder (its campaign is waiting for approval)."),
    skip: list[str] = typer.Option([], "--skip", help="Experiment id to skip (repeatable)."),
    edit: list[str] = typer.Option([], "--edit", help='ID=JSON, e.g. \'dry-run-r001-e00={"ph": 10.9}\' '
                                   "(repeatable)."),
    by: str = typer.Option("", "--by", help="Who decides (recorded in the ledger)."),
    note: str = typer.Option("", "--note", help="Why (recorded in the ledger)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Answer a campaign paused for approval: every waiting experiment not skipped or edited is approved."""
    from flows.campaign import APPROVAL_FILE

    path = data_dir / APPROVAL_FILE
    if not path.is_file():
        _err(f"error: no campaign in {data_dir} is waiting for approval ({path} is missing); it was started "
             "without --approve, already answered, or timed out (then `morphloop campaign resume` asks again)")
        raise typer.Exit(2)
    request = json.loads(path.read_text())
    edits = {}
    for item in edit:
        eid, sep, text = item.partition("=")
        try:
            change = json.loads(text) if sep else None
        except json.JSONDecodeError as exc:
            change, problem = None, str(exc)
        else:
            problem = "not a JSON object"
        if not isinstance(change, dict):
            _err(f'error: --edit {item!r}: write ID={{"name": value, ...}} ({problem})')
            raise typer.Exit(2)
        edits[eid] = change
    waiting = [e["experiment_id"] for e in request["experiments"]]
    unknown = sorted((set(skip) | set(edits)) - set(waiting))
    if unknown:
        _err(f"error: {unknown} not waiting for approval; waiting: {waiting}")
        raise typer.Exit(2)
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    decision = {"skip": list(skip), "edit": edits, "by": by, "note": note}
    try:
        with temporary_settings({PREFECT_API_URL: request["api_url"]}):
            resume_flow_run(UUID(request["flow_run_id"]), run_input=decision)
    except Exception as exc:  # server gone, run no longer paused, input refused: say which
        _err(f"error: could not resume flow run {request['flow_run_id']} at {request['api_url']}: {exc}")
        raise typer.Exit(1)
    approved = [e for e in waiting if e not in skip and e not in edits]
    result = {"approved": approved, "skipped": list(skip), "edited": edits, "flow_run_id": request["flow_run_id"]}
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _err(f"approved {approved}, skipped {list(skip)}, edited {sorted(edits)}")


def _snapshot(data_dir: Path) -> dict:
    from loop.ledger import Ledger, LedgerError

    try:
        with Ledger(data_dir, create=False) as ledger:
            return ledger.config()
    except LedgerError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)


@campaign_app.command("status")
def status(
    data_dir: Path = typer.Argument(..., help="The campaign folder."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Counts of proposed, dispatched, completed and failed experiments (duplicates must be 0)."""
    from loop.ledger import Ledger, LedgerError

    try:
        with Ledger(data_dir, create=False) as ledger:
            result = ledger.status()
    except LedgerError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        for key, value in result.items():
            _err(f"{key:>12}: {value}")


@campaign_app.command("report")
def report(data_dir: Path = typer.Argument(..., help="The campaign folder.")) -> None:
    """Write DIR/report.html: trajectories toward the target, objective per experiment, design space, images."""
    from flows.campaign_report import write_report
    from loop.ledger import LedgerError

    try:
        path = write_report(data_dir)
    except LedgerError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)
    _err(f"report: {path}")
