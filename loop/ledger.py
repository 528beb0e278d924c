"""The campaign ledger: an append-only SQLite record of every decision and experiment of a campaign.

A scientist starts a campaign in the evening and reads the ledger in the morning; a campaign killed at any point
resumes from it. The ledger is the campaign's only truth: every view (an experiment's state, what is pending, what
is in flight, the status counts) is derived by replaying its events.

Storage
-------
One SQLite file (``DIR/ledger.sqlite``; stdlib ``sqlite3``), WAL journal, ``synchronous=FULL`` (a committed event
survives a SIGKILL and a power cut). Two tables:

* ``events(id, campaign_id, experiment_id, round, kind, payload, created_at)``: append-only. Triggers abort any
  ``UPDATE`` or ``DELETE``; ``payload`` is a JSON object (NaN is stored as ``null``); ``created_at`` is UTC ISO 8601.
* ``meta(key, value)``: schema version, campaign id and the campaign's config snapshot; write-once as well.

Every state change is one ``BEGIN IMMEDIATE ... COMMIT`` transaction that re-reads the experiment's history
before it writes, so a SIGKILL leaves each change fully recorded or absent, and two processes can never both
dispatch one experiment. Open one :class:`Ledger` per process.

Experiment life cycle
---------------------
Experiments are named ``{campaign_id}-r{round:03d}-e{index:02d}`` (index from 0, in proposal order)::

    proposed --+--> dispatched --+--> completed
    requeued --'                 +--> failed --(retryable)--> dispatched (next attempt) | requeued | abandoned
                                 +--> requeued
                                 '--> abandoned
    proposed | requeued --> abandoned        (skipped by the operator, or left over when the campaign finishes)

Each dispatch is an *attempt* (1, 2, ...) carrying its own sample id; the ledger refuses a sample id that was
dispatched before in the campaign. ``completed``, ``abandoned`` and a non-retryable ``failed`` are terminal.
``approval`` events record the operator's decisions: ``approve``, ``edit`` (new conditions, before dispatch) or
``skip`` (recorded together with an ``abandoned`` event).

Resume policy (:func:`recover`, run by ``morphloop campaign resume DIR`` before anything else)
-----------------------------------------------------------------------------------------------
A SIGKILL can leave experiments *in flight*: dispatched, with no result recorded. Their reactor may hold a half-made
sample whose synthesis nobody finished, so its images are never a result of the proposed conditions.

* ``policy="requeue"`` (default): each in-flight experiment gets a ``requeued`` event with the reason
  :data:`INTERRUPTED_REASON` (and the interrupted sample id, to be discarded) and returns to :meth:`Ledger.pending`.
  Its next dispatch is the next attempt with a NEW sample id (:func:`sample_id_for`; the ledger refuses an old
  one), so the half-made sample can never be mistaken for the result.
* An experiment already dispatched ``max_attempts`` times (default 3) is ``abandoned`` instead, with the reason
  and the attempt count: a condition that keeps killing the campaign is not retried forever.
* ``policy="abandon"``: every in-flight experiment is abandoned (for reactors that cannot be cleaned unattended).
* A retryable failure that was never retried (the campaign died between the failure and the retry) is requeued or
  abandoned by the same rule.

Nothing is silently dropped: every experiment ends ``completed``, ``failed`` (not retryable) or ``abandoned``
with a reason, and :meth:`Ledger.finish` abandons the experiments still waiting for dispatch.

What a resumed campaign gets back
---------------------------------
The optimiser state is rebuilt from the ledger: the observations (:meth:`Ledger.experiments` rows in state
``completed``), the surrogate to use (:meth:`Ledger.current_model_dir`: the last finished fine-tune; an unfinished
one is :meth:`Ledger.retrain_in_progress`), the round counter (:meth:`Ledger.last_round`) and the config
(:meth:`Ledger.config`). Re-proposing a round already proposed returns the recorded experiments and writes
nothing, so a resumed flow never draws a second batch for one round.
"""
from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["Ledger", "LedgerError", "recover", "experiment_id_for", "sample_id_for", "SCHEMA_VERSION",
           "LEDGER_FILE", "KINDS", "STATES", "INTERRUPTED_REASON"]

SCHEMA_VERSION = 1
#: File name of the ledger inside a campaign's data directory.
LEDGER_FILE = "ledger.sqlite"
KINDS: tuple[str, ...] = ("campaign_started", "proposed", "dispatched", "completed", "failed", "abandoned",
                          "requeued", "retrain_started", "retrain_finished", "campaign_finished", "approval")
STATES: tuple[str, ...] = ("proposed", "dispatched", "completed", "failed", "abandoned", "requeued")
APPROVAL_DECISIONS: tuple[str, ...] = ("approve", "edit", "skip")
INTERRUPTED_REASON = "interrupted: dispatched but no result recorded (campaign was killed)"
_UNRETRIED_REASON = "failed (retryable) and not retried before the campaign stopped"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " campaign_id TEXT NOT NULL,"
    " experiment_id TEXT,"
    " round INTEGER,"
    f" kind TEXT NOT NULL CHECK (kind IN ({', '.join(repr(k) for k in KINDS)})),"
    " payload TEXT NOT NULL CHECK (json_valid(payload)),"
    " created_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_by_experiment ON events (experiment_id, id)",
    "CREATE INDEX IF NOT EXISTS events_by_kind ON events (kind, round)",
    *(f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} BEGIN "
      f"SELECT RAISE(ABORT, 'the campaign ledger is append-only: {op} of {table} is forbidden'); END"
      for table in ("events", "meta") for op in ("UPDATE", "DELETE")),
)


class LedgerError(RuntimeError):
    """An illegal transition, an unreadable ledger or a ledger of an unknown schema; the message says which."""


def experiment_id_for(campaign_id: str, round: int, index: int) -> str:
    """The deterministic id of experiment ``index`` (from 0) of ``round`` in ``campaign_id``."""
    return f"{campaign_id}-r{round:03d}-e{index:02d}"


def sample_id_for(experiment_id: str, attempt: int) -> str:
    """A sample id for ``attempt`` (from 1) of an experiment: a new one per attempt, never reused."""
    return f"{experiment_id}-s{attempt}"


@dataclass
class _Experiment:
    """One experiment, folded from its events (no checks: a hand-written ledger folds too)."""

    experiment_id: str
    round: int | None = None
    index: int | None = None
    state: str | None = None
    source: str | None = None
    conditions: dict[str, Any] = field(default_factory=dict)
    predicted: dict[str, Any] | None = None
    attempts: int = 0
    sample_ids: list[str] = field(default_factory=list)
    descriptors: dict[str, Any] | None = None
    images: list[str] = field(default_factory=list)
    run_uid: str | None = None
    reason: str | None = None
    retryable: bool | None = None
    approval: str | None = None
    failures: int = 0
    duplicate: bool = False
    proposed_at: str | None = None
    updated_at: str | None = None
    _open_dispatch: bool = False

    def apply(self, kind: str, rnd: int | None, p: dict[str, Any], at: str) -> None:
        self.updated_at = at
        if kind == "proposed":
            self.round, self.index, self.source = rnd, p.get("index"), p.get("source")
            self.conditions, self.predicted, self.proposed_at = dict(p.get("conditions") or {}), p.get("predicted"), at
        elif kind == "approval":
            self.approval = p.get("decision")
            if p.get("decision") == "edit" and p.get("conditions") is not None:
                self.conditions = dict(p["conditions"])
            return
        elif kind == "dispatched":
            self.duplicate |= self._open_dispatch  # a second dispatch with no failure or requeue between
            self._open_dispatch = True
            self.attempts += 1
            self.sample_ids.append(p.get("sample_id"))
        elif kind == "completed":
            self.descriptors, self.images, self.run_uid = p.get("descriptors"), list(p.get("images") or []), \
                p.get("run_uid")
        elif kind in ("failed", "requeued"):
            self._open_dispatch = False
            self.failures += kind == "failed"
        if kind in ("failed", "abandoned", "requeued"):
            self.reason, self.retryable = p.get("reason"), p.get("retryable") if kind == "failed" else None
        if kind in STATES:
            self.state = kind

    @property
    def terminal(self) -> bool:
        return self.state in ("completed", "abandoned") or (self.state == "failed" and not self.retryable)

    def row(self) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id, "round": self.round, "index": self.index, "state": self.state,
                "source": self.source, "attempts": self.attempts,
                "sample_id": self.sample_ids[-1] if self.sample_ids else None, "sample_ids": list(self.sample_ids),
                "conditions": dict(self.conditions), "predicted": self.predicted, "descriptors": self.descriptors,
                "images": list(self.images), "run_uid": self.run_uid, "reason": self.reason,
                "retryable": self.retryable, "approval": self.approval, "failures": self.failures,
                "duplicate": self.duplicate, "proposed_at": self.proposed_at, "updated_at": self.updated_at}


_COLUMNS = tuple(_Experiment("").row())


class Ledger:
    """The append-only event log of one campaign, in a SQLite file.

    Parameters
    ----------
    path : str or Path
        The ledger file, or a campaign data directory (the ledger is then ``path / LEDGER_FILE``).
    create : bool
        Create the file when missing (default); ``False`` (resume) raises :class:`LedgerError` instead.

    Raises
    ------
    LedgerError
        The file is not a SQLite database, not a MorphoLoop ledger, or written by a newer schema version.
    """

    def __init__(self, path: str | Path, create: bool = True) -> None:
        path = Path(path)
        self.path = path / LEDGER_FILE if path.is_dir() else path
        if not self.path.parent.is_dir():
            raise LedgerError(f"cannot open the ledger {self.path}: folder {self.path.parent} does not exist; "
                              "create the campaign's data directory first")
        if not create and not self.path.is_file():
            raise LedgerError(f"no campaign ledger at {self.path}: is this the campaign's data directory?")
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._campaign_id: str | None = None
        try:
            self._open_schema()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise LedgerError(f"{self.path} is not a readable campaign ledger ({exc}); point to the campaign's "
                              f"{LEDGER_FILE}") from exc

    # -- connection and transactions ------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # never reuse a connection across fork
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._pid = os.getpid()
        return self._conn

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE ... COMMIT`` transaction (rolled back on any exception)."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _open_schema(self) -> None:
        with self._tx() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "meta" in tables:
                version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if version is None or not str(version[0]).isdigit():
                    raise LedgerError(f"{self.path}: unknown ledger schema (version {version and version[0]!r}); "
                                      "it was not written by MorphoLoop")
                if int(version[0]) != SCHEMA_VERSION:
                    raise LedgerError(f"{self.path} has ledger schema version {version[0]}, this MorphoLoop reads "
                                      f"version {SCHEMA_VERSION}; open it with the MorphoLoop version that wrote it")
                row = conn.execute("SELECT value FROM meta WHERE key = 'campaign_id'").fetchone()
                self._campaign_id = row[0] if row else None
                return
            if tables - {"sqlite_sequence"}:
                raise LedgerError(f"{self.path} is a SQLite file but not a campaign ledger (tables "
                                  f"{sorted(tables)}); choose another path")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _append(self, conn: sqlite3.Connection, kind: str, payload: Mapping[str, Any],
                experiment_id: str | None = None, rnd: int | None = None) -> None:
        conn.execute("INSERT INTO events (campaign_id, experiment_id, round, kind, payload, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (self._campaign_id, experiment_id, rnd, kind, _dumps(payload, kind), _now()))

    def _events(self, conn: sqlite3.Connection, where: str = "", args: tuple = ()) -> list[tuple]:
        return conn.execute("SELECT id, campaign_id, experiment_id, round, kind, payload, created_at FROM events "
                            f"{where} ORDER BY id", args).fetchall()

    def _fold(self, conn: sqlite3.Connection, experiment_id: str | None = None) -> dict[str, _Experiment]:
        rows = self._events(conn, "WHERE experiment_id = ?" if experiment_id else "WHERE experiment_id IS NOT NULL",
                            (experiment_id,) if experiment_id else ())
        out: dict[str, _Experiment] = {}
        for _, _, eid, rnd, kind, payload, at in rows:
            out.setdefault(eid, _Experiment(eid)).apply(kind, rnd, json.loads(payload), at)
        return out

    def _campaign(self, conn: sqlite3.Connection) -> None:
        """Raise unless a campaign was started and is not finished (checked before every write)."""
        if self._campaign_id is None:  # another process may have started it since we opened the file
            row = conn.execute("SELECT value FROM meta WHERE key = 'campaign_id'").fetchone()
            self._campaign_id = row[0] if row else None
        if self._campaign_id is None:
            raise LedgerError(f"{self.path}: no campaign started in this ledger; call start_campaign(config) first")
        row = conn.execute("SELECT payload FROM events WHERE kind = 'campaign_finished'").fetchone()
        if row is not None:
            finished = json.loads(row[0])
            raise LedgerError(f"campaign {self._campaign_id} is finished ({finished.get('reason')}); the ledger "
                              "takes no more experiments: start a new campaign in a new data directory")

    def _experiment(self, conn: sqlite3.Connection, experiment_id: str, action: str,
                    allowed: Sequence[str]) -> _Experiment:
        """The experiment, checked to be in one of the ``allowed`` states for ``action`` (inside a transaction).

        ``"failed"`` in ``allowed`` admits a retryable failure only.
        """
        self._campaign(conn)
        exp = self._fold(conn, experiment_id).get(experiment_id)
        if exp is None or exp.state is None:
            raise LedgerError(f"cannot {action} experiment {experiment_id!r}: no such experiment was proposed in "
                              f"campaign {self._campaign_id}")
        if exp.state not in allowed or (exp.state == "failed" and not exp.retryable):
            detail = {"proposed": "never dispatched", "requeued": "waiting for a new dispatch",
                      "failed": "failed for good: not retryable"}.get(exp.state, f"after {exp.attempts} attempt(s)")
            ok = [("failed (retryable)" if a == "failed" else a) for a in allowed]
            raise LedgerError(f"cannot {action} experiment {experiment_id!r}: its state is {exp.state!r} ({detail}); "
                              f"{action} needs state {' or '.join(ok)}")
        return exp

    # -- writing --------------------------------------------------------------------------------------------
    def start_campaign(self, config: Mapping[str, Any], campaign_id: str | None = None) -> str:
        """Record the campaign's config snapshot and its start; returns the campaign id.

        Idempotent: calling it again with the same config returns the existing id. ``campaign_id`` defaults to
        ``{config['name'] or 'campaign'}-{UTC time}``; it prefixes every experiment and sample id.
        """
        snapshot = _dumps(config, "config")
        with self._tx() as conn:
            if self._campaign_id is not None:
                stored = conn.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0]
                if stored != snapshot or (campaign_id not in (None, self._campaign_id)):
                    raise LedgerError(f"{self.path} already holds campaign {self._campaign_id} with another config; "
                                      "resume it (`morphloop campaign resume DIR`) or start the new campaign in a "
                                      "new data directory")
                return self._campaign_id
            name = campaign_id or f"{config.get('name') or 'campaign'}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
            if not _ID.match(name):
                raise LedgerError(f"campaign id {name!r} must be 1-64 letters, digits, '_', '.' or '-' (starting "
                                  "with a letter or digit); choose another name")
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [("campaign_id", name), ("config", snapshot),
                                                                 ("created_at", _now())])
            self._campaign_id = name
            self._append(conn, "campaign_started", {"config": json.loads(snapshot)})
        return name

    def propose(self, round: int, experiments: Sequence[Mapping[str, Any]]) -> list[str]:
        """Record a round's batch; returns the experiment ids, in order.

        Parameters
        ----------
        round : int
            The round (>= 0, larger than every round proposed before).
        experiments : sequence of mapping
            Each ``{"conditions": {...}, "predicted": {...} or None, "source": "pso" | "botorch" | ...}``; further
            JSON-able keys are stored with them.

        Idempotent: if ``round`` was already proposed (a resumed flow re-proposing after a crash), the recorded
        ids are returned and nothing is written; the recorded batch stands.
        """
        if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 0:
            raise LedgerError(f"round must be an integer >= 0, got {round!r}")
        round = int(round)
        with self._tx() as conn:
            self._campaign(conn)
            existing = [r[0] for r in conn.execute("SELECT experiment_id FROM events WHERE kind = 'proposed' AND "
                                                   "round = ? ORDER BY id", (round,))]
            if existing:
                return existing
            last = conn.execute("SELECT MAX(round) FROM events WHERE kind = 'proposed'").fetchone()[0]
            if last is not None and round < last:
                raise LedgerError(f"cannot propose round {round}: round {last} was proposed already; rounds only grow")
            if not experiments:
                raise LedgerError(f"round {round}: propose at least one experiment")
            ids = []
            for index, exp in enumerate(experiments):
                if not isinstance(exp, Mapping) or not isinstance(exp.get("conditions"), Mapping):
                    raise LedgerError(f"round {round}, experiment {index}: give a mapping with 'conditions' (a "
                                      f"mapping), 'predicted' and 'source'; got {exp!r}")
                eid = experiment_id_for(self._campaign_id, round, index)
                payload = {**exp, "index": index, "predicted": exp.get("predicted"), "source": exp.get("source")}
                self._append(conn, "proposed", payload, eid, round)
                ids.append(eid)
            return ids

    def mark_dispatched(self, experiment_id: str, sample_id: str, attempt: int) -> None:
        """Record that ``experiment_id`` went to the reactor as ``sample_id`` (its ``attempt``-th dispatch).

        ``attempt`` must be :meth:`next_attempt` and ``sample_id`` new to the campaign (:func:`sample_id_for`).
        Allowed from ``proposed``, ``requeued`` and a retryable ``failed``.
        """
        if not (isinstance(sample_id, str) and sample_id):
            raise LedgerError(f"cannot dispatch {experiment_id!r}: sample_id must be a non-empty string")
        with self._tx() as conn:
            exp = self._experiment(conn, experiment_id, "dispatch", ("proposed", "requeued", "failed"))
            if attempt != exp.attempts + 1:
                raise LedgerError(f"cannot dispatch {experiment_id!r} as attempt {attempt!r}: it was dispatched "
                                  f"{exp.attempts} time(s), so this is attempt {exp.attempts + 1}")
            used = conn.execute("SELECT experiment_id FROM events WHERE kind = 'dispatched' AND "
                                "json_extract(payload, '$.sample_id') = ?", (sample_id,)).fetchone()
            if used:
                raise LedgerError(f"cannot dispatch {experiment_id!r} as sample {sample_id!r}: that sample id was "
                                  f"dispatched before (for {used[0]}); every attempt needs a new sample id")
            self._append(conn, "dispatched", {"sample_id": sample_id, "attempt": int(attempt),
                                              "conditions": exp.conditions}, experiment_id, exp.round)

    def mark_completed(self, experiment_id: str, descriptors: Mapping[str, Any], images: Sequence[str],
                       run_uid: str | None = None) -> None:
        """Record the measured ``descriptors``, the ``images`` (paths) and the Bluesky ``run_uid`` of a dispatched
        experiment."""
        with self._tx() as conn:
            exp = self._experiment(conn, experiment_id, "complete", ("dispatched",))
            self._append(conn, "completed", {"descriptors": dict(descriptors), "images": [str(i) for i in images],
                                             "run_uid": run_uid, "sample_id": exp.sample_ids[-1],
                                             "attempt": exp.attempts}, experiment_id, exp.round)

    def mark_failed(self, experiment_id: str, reason: str, attempt: int, retryable: bool) -> None:
        """Record that ``attempt`` of a dispatched experiment failed; a ``retryable`` one may be dispatched again."""
        with self._tx() as conn:
            exp = self._experiment(conn, experiment_id, "fail", ("dispatched",))
            if attempt != exp.attempts:
                raise LedgerError(f"cannot fail attempt {attempt!r} of {experiment_id!r}: the attempt in flight is "
                                  f"{exp.attempts}")
            self._append(conn, "failed", {"reason": str(reason), "attempt": int(attempt), "retryable": bool(retryable),
                                          "sample_id": exp.sample_ids[-1]}, experiment_id, exp.round)

    def mark_abandoned(self, experiment_id: str, reason: str) -> None:
        """Give up an experiment that is not terminal (it will never be dispatched again)."""
        with self._tx() as conn:
            exp = self._experiment(conn, experiment_id, "abandon", ("proposed", "requeued", "dispatched", "failed"))
            self._append(conn, "abandoned", {"reason": str(reason), "attempts": exp.attempts}, experiment_id,
                         exp.round)

    def mark_requeued(self, experiment_id: str, reason: str) -> None:
        """Send a dispatched (or retryably failed) experiment back to :meth:`pending`; its next dispatch needs a
        new sample id."""
        with self._tx() as conn:
            exp = self._experiment(conn, experiment_id, "requeue", ("dispatched", "failed"))
            self._append(conn, "requeued", {"reason": str(reason), "attempts": exp.attempts,
                                            "sample_id": exp.sample_ids[-1]}, experiment_id, exp.round)

    def record_approval(self, experiment_id: str, decision: str, conditions: Mapping[str, Any] | None = None,
                        by: str = "", note: str = "") -> None:
        """Record the operator's ``decision`` on an experiment waiting for dispatch.

        ``"approve"``; ``"edit"`` with the new ``conditions`` (dispatched from then on); ``"skip"``, which also
        abandons the experiment (both events in one transaction).
        """
        if decision not in APPROVAL_DECISIONS:
            raise LedgerError(f"approval decision must be one of {list(APPROVAL_DECISIONS)}, got {decision!r}")
        if (decision == "edit") != (conditions is not None):
            raise LedgerError(f"approval of {experiment_id!r}: give conditions with 'edit', and only with 'edit'")
        with self._tx() as conn:
            exp = self._experiment(conn, experiment_id, "approve", ("proposed", "requeued"))
            payload = {"decision": decision, "by": by, "note": note}
            if conditions is not None:
                payload["conditions"] = dict(conditions)
            self._append(conn, "approval", payload, experiment_id, exp.round)
            if decision == "skip":
                self._append(conn, "abandoned", {"reason": f"skipped by {by or 'the operator'}"
                                                 + (f": {note}" if note else ""), "attempts": exp.attempts},
                             experiment_id, exp.round)

    def retrain_started(self, round: int, model_dir: str | Path) -> None:
        """Record that fine-tuning the surrogate into ``model_dir`` began after ``round``."""
        with self._tx() as conn:
            self._campaign(conn)
            self._append(conn, "retrain_started", {"model_dir": str(model_dir)}, None, int(round))

    def retrain_finished(self, round: int, model_dir: str | Path, metrics: Mapping[str, Any] | None = None) -> None:
        """Record that the fine-tune started for ``round`` wrote ``model_dir`` (the model to use from now on)."""
        with self._tx() as conn:
            self._campaign(conn)
            if self._retrain(conn)[0] != int(round):
                raise LedgerError(f"cannot finish the retrain of round {round}: no retrain of that round is in "
                                  "progress; call retrain_started first")
            self._append(conn, "retrain_finished", {"model_dir": str(model_dir), "metrics": dict(metrics or {})},
                         None, int(round))

    def finish(self, reason: str, met: bool) -> None:
        """Record the campaign's end (``met``: the target was reached).

        Experiments still waiting for dispatch are abandoned in the same transaction. Raises while experiments
        are in flight: wait for their results or :meth:`mark_abandoned` them first.
        """
        with self._tx() as conn:
            self._campaign(conn)
            exps = self._fold(conn).values()
            flying = [e.experiment_id for e in exps if e.state == "dispatched"]
            if flying:
                raise LedgerError(f"cannot finish campaign {self._campaign_id}: experiments {flying} are in flight; "
                                  "record their results or abandon them first")
            for e in exps:
                if not e.terminal:
                    when = "a retry" if e.state == "failed" else "dispatch"
                    self._append(conn, "abandoned", {"reason": f"campaign finished before {when}: {reason}",
                                                     "attempts": e.attempts}, e.experiment_id, e.round)
            self._append(conn, "campaign_finished", {"reason": str(reason), "met": bool(met)})

    def recover(self, policy: str = "requeue", max_attempts: int = 3) -> dict[str, list[str]]:
        """Resolve what a killed campaign left behind (the policy of the module docstring).

        Returns ``{"requeued": [ids], "abandoned": [ids]}``. Idempotent: a second call finds nothing to do.
        """
        if policy not in ("requeue", "abandon"):
            raise LedgerError(f"interrupted policy must be 'requeue' or 'abandon', got {policy!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise LedgerError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        out: dict[str, list[str]] = {"requeued": [], "abandoned": []}
        if self._campaign_id is None or self.is_finished():
            return out
        todo = [e.experiment_id for e in self._all().values()
                if e.state == "dispatched" or (e.state == "failed" and e.retryable)]
        for eid in todo:
            with self._tx() as conn:  # one transaction per experiment, state re-read inside it
                exp = self._fold(conn, eid)[eid]
                if exp.state not in ("dispatched", "failed") or (exp.state == "failed" and not exp.retryable):
                    continue
                reason = INTERRUPTED_REASON if exp.state == "dispatched" else _UNRETRIED_REASON
                payload = {"attempts": exp.attempts, "sample_id": exp.sample_ids[-1], "policy": policy,
                           "max_attempts": max_attempts}
                if policy == "abandon" or exp.attempts >= max_attempts:
                    why = "policy 'abandon'" if policy == "abandon" else \
                        f"gave up after {exp.attempts} attempt(s) (max_attempts={max_attempts})"
                    self._append(conn, "abandoned", {**payload, "reason": f"{reason}; {why}"}, eid, exp.round)
                    out["abandoned"].append(eid)
                else:
                    self._append(conn, "requeued", {**payload, "reason": reason}, eid, exp.round)
                    out["requeued"].append(eid)
        return out

    # -- reading --------------------------------------------------------------------------------------------
    def _all(self) -> dict[str, _Experiment]:
        with self._lock:
            return self._fold(self._connection())

    def _retrain(self, conn: sqlite3.Connection) -> tuple[int | None, str | None]:
        """(round of the retrain in progress or None, model_dir of the last finished retrain or None)."""
        in_progress, model = None, None
        for _, _, _, rnd, kind, payload, _ in self._events(conn, "WHERE kind IN ('retrain_started', "
                                                                 "'retrain_finished')"):
            if kind == "retrain_started":
                in_progress = rnd
            else:
                in_progress, model = None, json.loads(payload)["model_dir"]
        return in_progress, model

    @property
    def campaign_id(self) -> str | None:
        """The campaign's id (None before :meth:`start_campaign`)."""
        return self._campaign_id

    def config(self) -> dict[str, Any] | None:
        """The config snapshot recorded by :meth:`start_campaign`."""
        with self._lock:
            row = self._connection().execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        return None if row is None else json.loads(row[0])

    def events(self) -> pd.DataFrame:
        """Every event, oldest first (``payload`` decoded)."""
        with self._lock:
            rows = self._events(self._connection())
        cols = ["id", "campaign_id", "experiment_id", "round", "kind", "payload", "created_at"]
        return pd.DataFrame([(*r[:5], json.loads(r[5]), r[6]) for r in rows], columns=cols)

    def experiments(self) -> pd.DataFrame:
        """One row per experiment (by round and index) with its latest state.

        Columns: ``experiment_id, round, index, state, source, attempts, sample_id`` (latest), ``sample_ids``
        (all attempts), ``conditions, predicted, descriptors`` (dicts), ``images, run_uid, reason`` (of the
        latest failure, requeue or abandonment), ``retryable, approval, failures, duplicate, proposed_at,
        updated_at``, then one column per condition and per measured descriptor.
        """
        rows = [e.row() for e in self._all().values()]
        df = pd.DataFrame(rows, columns=list(_COLUMNS))
        if not rows:
            return df
        df = df.sort_values(["round", "index"], kind="stable").reset_index(drop=True)
        flat = pd.DataFrame([{**r["conditions"], **(r["descriptors"] or {})} for r in df.to_dict("records")])
        return pd.concat([df, flat[[c for c in flat.columns if c not in _COLUMNS]]], axis=1)

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        """One experiment's row of :meth:`experiments` as a dict (without the flat columns)."""
        exp = self._all().get(experiment_id)
        if exp is None:
            raise LedgerError(f"unknown experiment {experiment_id!r} in campaign {self._campaign_id}")
        return exp.row()

    def state_of(self, experiment_id: str) -> str:
        """The latest state of an experiment (one of :data:`STATES`)."""
        return self.experiment(experiment_id)["state"]

    def next_attempt(self, experiment_id: str) -> int:
        """The attempt number its next :meth:`mark_dispatched` must carry."""
        return self.experiment(experiment_id)["attempts"] + 1

    def _ids(self, *states: str) -> list[str]:
        exps = sorted(self._all().values(), key=lambda e: (-1 if e.round is None else e.round, e.index or 0))
        return [e.experiment_id for e in exps if e.state in states]

    def pending(self) -> list[str]:
        """Experiments waiting for dispatch (``proposed`` or ``requeued``), by round and index."""
        return self._ids("proposed", "requeued")

    def in_flight(self) -> list[str]:
        """Experiments dispatched with no result recorded: what a SIGKILL leaves behind."""
        return self._ids("dispatched")

    def completed(self) -> list[str]:
        """Experiments with a recorded result."""
        return self._ids("completed")

    def last_round(self) -> int | None:
        """The last round proposed (None before the first)."""
        rounds = [e.round for e in self._all().values() if e.round is not None]
        return max(rounds) if rounds else None

    def rounds_done(self) -> int:
        """The number of proposed rounds whose experiments are all terminal (completed, abandoned or failed for
        good)."""
        by_round: dict[int, bool] = {}
        for e in self._all().values():
            by_round[e.round] = by_round.get(e.round, True) and e.terminal
        return sum(by_round.values())

    def is_finished(self) -> bool:
        """Whether :meth:`finish` was recorded."""
        return self._finished() is not None

    def _finished(self) -> dict[str, Any] | None:
        with self._lock:
            row = self._connection().execute("SELECT payload FROM events WHERE kind = 'campaign_finished'").fetchone()
        return None if row is None else json.loads(row[0])

    def current_model_dir(self) -> str | None:
        """The surrogate written by the last finished fine-tune (None: the config's model)."""
        with self._lock:
            return self._retrain(self._connection())[1]

    def retrain_in_progress(self) -> int | None:
        """The round of a fine-tune that started and never finished (a killed campaign redoes it), else None."""
        with self._lock:
            return self._retrain(self._connection())[0]

    def status(self) -> dict[str, Any]:
        """Counts for the morning report.

        ``state`` ("not_started" | "running" | "finished"), ``proposed`` and ``dispatched`` (experiments ever
        proposed / dispatched), ``completed, failed, abandoned, pending, in_flight`` (experiments in that state
        now), ``attempts`` (dispatches), ``failures`` (failed events), ``duplicates`` (experiments dispatched twice
        with no failure or requeue between: must stay 0), ``rounds``, ``rounds_done``, ``campaign_id``, ``met``
        and ``finish_reason``.
        """
        exps = list(self._all().values())
        finished = self._finished()
        count = lambda *states: sum(e.state in states for e in exps)  # noqa: E731
        return {"campaign_id": self._campaign_id,
                "state": "not_started" if self._campaign_id is None else "finished" if finished else "running",
                "proposed": len(exps), "dispatched": sum(e.attempts > 0 for e in exps),
                "completed": count("completed"), "failed": count("failed"), "abandoned": count("abandoned"),
                "pending": count("proposed", "requeued"), "in_flight": count("dispatched"),
                "attempts": sum(e.attempts for e in exps), "failures": sum(e.failures for e in exps),
                "duplicates": sum(e.duplicate for e in exps), "rounds": len({e.round for e in exps}),
                "rounds_done": self.rounds_done(), "met": finished.get("met") if finished else None,
                "finish_reason": finished.get("reason") if finished else None}


def recover(ledger: Ledger | str | Path, policy: str = "requeue", max_attempts: int = 3) -> dict[str, list[str]]:
    """:meth:`Ledger.recover` on a ledger or on the ledger file (or campaign directory) at a path."""
    if isinstance(ledger, Ledger):
        return ledger.recover(policy, max_attempts)
    with Ledger(ledger, create=False) as opened:
        return opened.recover(policy, max_attempts)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _jsonable(value: Any, where: str) -> Any:
    """``value`` with numpy scalars/arrays and paths made plain, non-finite floats as None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    raise LedgerError(f"{where}: {type(value).__name__} {value!r} cannot be stored in the ledger (JSON only)")


def _dumps(payload: Mapping[str, Any], where: str) -> str:
    if not isinstance(payload, Mapping):
        raise LedgerError(f"{where}: the ledger stores mappings, got {type(payload).__name__}")
    return json.dumps(_jsonable(payload, where), sort_keys=True, allow_nan=False, separators=(",", ":"))
