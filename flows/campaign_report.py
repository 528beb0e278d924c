"""``morphloop campaign report DIR``: one self-contained HTML page for the morning after.

Plots (PNG, embedded): each descriptor per experiment against the target and its tolerance band; the objective
per experiment with the best so far; the explored design space (pH vs time, NaOH vs NH4OH) by round; the SEM
images of the best samples beside the surrogate's prediction for the same conditions.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from loop.config import DESCRIPTORS
from loop.ledger import Ledger
from loop.objective import Objective, Target

LABELS = {"d50_um": "D50 (µm)", "sphericity_mean": "sphericity mean", "sphericity_std": "sphericity std",
          "texture": "texture"}


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _objective(config: dict) -> Objective | None:
    t = config.get("target", {})
    if t.get("d50_um") is None:
        return None
    target = Target(d50_um=t["d50_um"], sphericity_mean=t["sphericity_mean"], texture=t["texture"],
                    sphericity_std=t.get("sphericity_std"), tolerance=config.get("tolerance", 0.05))
    w = config.get("weights", {})
    weights = (w.get("w_d50", 1.0), w.get("w_sphericity", 1.0), w.get("w_texture", 1.0))
    return Objective(target, weights)


def _trajectory_figure(rows: list[dict], config: dict):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    target = config.get("target", {})
    tol = config.get("tolerance", 0.05)
    for ax, key in zip(axes, DESCRIPTORS):
        values = [r["descriptors"].get(key) if r["descriptors"] else None for r in rows]
        xs = [i for i, v in enumerate(values) if v is not None]
        ax.plot(xs, [values[i] for i in xs], "o-", ms=4)
        if target.get(key) is not None:
            t = target[key]
            ax.axhline(t, color="k", lw=1)
            ax.axhspan(t * (1 - tol), t * (1 + tol), color="g", alpha=0.15, label=f"target ±{tol:.0%}")
            ax.legend(fontsize=7)
        ax.set_xlabel("experiment")
        ax.set_title(LABELS[key])
    fig.tight_layout()
    return fig


def _objective_figure(rows: list[dict], objective: Objective | None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    if objective is not None:
        f = [float(objective({k: (np.nan if r["descriptors"].get(k) is None else r["descriptors"][k])
                              for k in DESCRIPTORS})[0]) for r in rows]
        ax.semilogy(range(len(f)), f, "o", label="experiment")
        ax.semilogy(range(len(f)), np.minimum.accumulate(f), "-", label="best so far")
        ax.legend(fontsize=8)
    ax.set_xlabel("experiment")
    ax.set_ylabel("objective F (eq. 3)")
    fig.tight_layout()
    return fig


def _space_figure(rows: list[dict]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rounds = [r["round"] for r in rows]
    for ax, (x, y) in zip(axes, (("ph", "time_min"), ("naoh_wt_pct", "nh4oh_wt_pct"))):
        sc = ax.scatter([r["conditions"].get(x) for r in rows], [r["conditions"].get(y) for r in rows], c=rounds,
                        cmap="viridis", s=30)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
    fig.colorbar(sc, ax=axes, label="round")
    return fig


def _images_figure(best: list[dict], predictions: dict):
    import matplotlib.pyplot as plt
    import tifffile

    n = len(best)
    fig, axes = plt.subplots(n, 4, figsize=(12, 3.2 * n), squeeze=False)
    for i, row in enumerate(best):
        panels = []
        for path in row["images"][:2]:
            try:
                panels.append(tifffile.imread(path))
            except (OSError, ValueError):
                panels.append(np.zeros((8, 8)))
        pred = predictions.get(row["experiment_id"], {})
        panels += [pred.get("low"), pred.get("high")]
        titles = ["measured 3k×", "measured 15k×", "surrogate 3k× tile", "surrogate 30k× tile"]
        for j, (panel, title) in enumerate(zip(panels, titles)):
            ax = axes[i, j]
            if panel is not None:
                ax.imshow(panel, cmap="gray")
            ax.set_title(f"{row['experiment_id'][-8:]} {title}" if j == 0 else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig


def write_report(data_dir: str | Path, with_predictions: bool = True) -> Path:
    """Write ``DIR/report.html`` from the ledger; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    data_dir = Path(data_dir)
    with Ledger(data_dir, create=False) as ledger:
        config = ledger.config()
        status = ledger.status()
        rows = [ledger.experiment(e) for e in ledger.completed()]
        failed = [ledger.experiment(e) for e in ledger.experiments()["experiment_id"]
                  if ledger.state_of(e) in ("failed", "abandoned")] if status["proposed"] else []
    rows.sort(key=lambda r: (r["round"], r["index"]))
    objective = _objective(config)
    scored = []
    for r in rows:
        d = {k: (np.nan if r["descriptors"].get(k) is None else r["descriptors"][k]) for k in DESCRIPTORS}
        scored.append((float(objective(d)[0]) if objective else np.nan, r))
    best = [r for _, r in sorted(scored, key=lambda fr: fr[0])[:3]]
    predictions = {}
    if with_predictions and best:
        try:
            from models.surrogate.model import DEFAULT_MODEL_DIR
            from models.surrogate.predictor import SurrogatePredictor

            model_dir = config.get("model_dir") or DEFAULT_MODEL_DIR
            predictor = SurrogatePredictor.from_pretrained(model_dir, steps=6)
            tiles = predictor.generate([r["conditions"] for r in best], 1, seed=0)
            predictions = {r["experiment_id"]: {m: tiles[m][i, 0] for m in tiles} for i, r in enumerate(best)}
        except Exception:  # the report must not fail on a missing model; the panels stay empty
            predictions = {}
    figures = []
    if rows:
        figures = [("Descriptors toward the target", _png(_trajectory_figure(rows, config))),
                   ("Objective per experiment", _png(_objective_figure(rows, objective))),
                   ("Explored design space", _png(_space_figure(rows))),
                   ("Best samples: measured vs surrogate", _png(_images_figure(best, predictions)))]
    table = "".join(
        f"<tr><td>{html.escape(r['experiment_id'])}</td><td>{html.escape(str(r['sample_id']))}</td>"
        + "".join(f"<td>{r['descriptors'].get(k):.3f}</td>" if r["descriptors"].get(k) is not None else "<td>-</td>"
                  for k in DESCRIPTORS)
        + f"<td>{f:.4f}</td><td><code>{html.escape(json.dumps(r['conditions']))}</code></td></tr>"
        for f, r in sorted(scored, key=lambda fr: (np.isnan(fr[0]), fr[0])))
    failures = "".join(f"<li>{html.escape(r['experiment_id'])}: {html.escape(str(r['state']))} — "
                       f"{html.escape(str(r['reason']))}</li>" for r in failed)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>MorphoLoop campaign {html.escape(str(status['campaign_id']))}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}
table{{border-collapse:collapse}}img{{max-width:100%}}</style></head><body>
<h1>Campaign {html.escape(str(status['campaign_id']))}</h1>
<p>State: <b>{status['state']}</b> ({html.escape(str(status.get('finish_reason')))}); target met: <b>{status.get('met')}</b>.
Proposed {status['proposed']}, completed {status['completed']}, failed {status['failed']}, abandoned {status['abandoned']},
duplicates {status['duplicates']}.</p>
<p>Target: <code>{html.escape(json.dumps(config.get('target')))}</code>, tolerance {config.get('tolerance')}.</p>
{''.join(f'<h2>{t}</h2><img src="{src}">' for t, src in figures)}
<h2>Experiments (best first)</h2><table><tr><th>experiment</th><th>sample</th>{''.join(f'<th>{LABELS[k]}</th>' for k in DESCRIPTORS)}<th>F</th><th>conditions</th></tr>{table}</table>
<h2>Failures</h2><ul>{failures or '<li>none</li>'}</ul>
</body></html>"""
    path = data_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
