"""`mupath verify`: check a whole store and say which tasks a problem touches.

Checks, in order: the manifest database's own integrity; the manifest's consistency (the root
pseudo-task is retained, every retained path and its components exist, every component is used,
every committed task has a no-forgetting reference); every referenced blob (components, task data,
reference logits) exists and hashes to its name; no file in `blobs/` is left over (orphaned blobs,
temporary files of interrupted writes). Finally every committed task that no problem touches is
re-run on its test images and must reproduce its reference logits bit for bit, exactly as the
no-forgetting check after each commit does. A problem in one task never hides the others.

`fix_store` (`mupath verify --fix`) deletes only leftovers: orphaned blobs, `.tmp-*` files and
scratch folders of finished runs, never anything the manifest references."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import torch

from mupath.errors import MupathError
from mupath.store.records import ROOT_TASK
from mupath.store.store import Store

#: `--fix` leaves files younger than this: a command running now may be about to reference a blob it
#: has just written (its commit transaction can wait up to 120 s for the write lock).
FIX_MIN_AGE_S = 300.0

_BLOB_NAME = re.compile(r"^[0-9a-f]{64}\.safetensors$")

# problem kinds
MANIFEST = "manifest"            #: the manifest database is damaged or inconsistent
MISSING = "missing-blob"         #: a referenced blob file does not exist
CORRUPT = "corrupt-blob"         #: a referenced blob does not hash to its name (truncated, edited) or cannot be read
FORGETTING = "forgetting"        #: a task's logits differ from its reference
CHECK_FAILED = "check-failed"    #: a task's model or data could not be rebuilt for the check
ORPHAN = "orphan"                #: a leftover file nothing references (harmless; `--fix` deletes it)
STRAY = "stray-file"             #: an unexpected file inside blobs/ (not ours; left for a person)
HARMLESS = frozenset({ORPHAN, STRAY})


@dataclasses.dataclass
class Problem:
    kind: str
    message: str                                      #: one line
    tasks: list[str] = dataclasses.field(default_factory=list)   #: tasks touched ("__root__": the root)
    path: str | None = None                           #: the leftover file `--fix` may delete (orphans)

    def line(self) -> str:
        touched = f"  [tasks: {', '.join(self.tasks)}]" if self.tasks else ""
        return " ".join(f"{self.kind}: {self.message}{touched}".split())


@dataclasses.dataclass
class VerifyReport:
    store: Path
    problems: list[Problem]
    tasks: list[str]                 #: committed tasks (with a retained path), in order of addition
    checked: list[str]               #: tasks re-run and found bit-identical to their reference
    blobs: int                       #: referenced blobs hashed

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def serious(self) -> list[Problem]:
        """Problems other than harmless leftovers (orphans, stray files)."""
        return [p for p in self.problems if p.kind not in HARMLESS]

    @property
    def touched(self) -> list[str]:
        names = {t for p in self.problems for t in p.tasks}
        return [t for t in [ROOT_TASK, *self.tasks] if t in names] + sorted(names - {ROOT_TASK, *self.tasks})

    @property
    def usable(self) -> list[str]:
        """Committed tasks no problem touches (and whose check passed)."""
        return [t for t in self.tasks if t in self.checked]

    def summary(self) -> str:
        if self.healthy:
            return (f"store {self.store} is healthy: {len(self.checked)} task(s) re-run bit for bit, "
                    f"{self.blobs} blob(s) verified")
        orphans = sum(p.kind == ORPHAN for p in self.problems)
        parts = [f"store {self.store}: {len(self.problems)} problem(s)"]
        if self.touched:
            parts.append(f"tasks touched: {', '.join(self.touched)}")
        parts.append(f"still usable: {', '.join(self.usable) or 'none'}")
        if orphans:
            parts.append(f"{orphans} leftover file(s) that `mupath verify --fix` deletes")
        return "; ".join(parts)


@dataclasses.dataclass
class FixReport:
    removed: list[str]               #: leftover files and folders deleted
    kept_recent: list[str]           #: leftovers too recent to delete safely (a command may be running)


def verify_store(store: Store, *, rerun: bool = True) -> VerifyReport:
    """Check `store`'s store (see the module docstring). `rerun=False` skips the bit-exact re-run."""
    problems: list[Problem] = []
    db = store.manifest.db
    try:
        state = _read_manifest(db, problems)
    except sqlite3.DatabaseError as exc:
        problems.append(Problem(MANIFEST, f"the manifest cannot be read ({_one_line(exc)}); restore "
                                          "manifest.sqlite from a backup", [ROOT_TASK]))
        return VerifyReport(store.folder, problems, [], [], 0)
    tasks, comps, retained, checks = state["tasks"], state["components"], state["retained"], state["checks"]
    committed = [t for t in tasks if t in retained]

    users: dict[str, set[str]] = {}
    for task, (_, path_comps, _) in retained.items():
        for cid in path_comps.values():
            users.setdefault(cid, set()).add(task)

    problems.extend(_consistency(tasks, comps, retained, checks, users))
    refs = _references(tasks, comps, checks, users)
    problems.extend(_blob_problems(store, refs, tasks))

    # -- leftovers --------------------------------------------------------------------------------
    problems.extend(_leftovers(store, set(refs)))

    # -- the bit-exact no-forgetting re-run -------------------------------------------------------
    touched_now = {t for p in problems for t in p.tasks}
    checked: list[str] = []
    if rerun:
        to_check = [t for t in committed if t in checks and t not in touched_now]
        if to_check:
            checked, failed = _rerun(store, {t: checks[t] for t in to_check})
            problems.extend(failed)
    return VerifyReport(store.folder, problems, committed, checked, len(refs))


def _consistency(tasks: dict[str, str], comps: dict[str, Any], retained: dict[str, Any],
                 checks: dict[str, Any], users: dict[str, set[str]]) -> list[Problem]:
    """The manifest's own consistency: the root is retained, every retained path and its components
    exist, every component is used, every committed task has a no-forgetting reference."""
    problems: list[Problem] = []
    committed = [t for t in tasks if t in retained]
    if ROOT_TASK not in retained:
        problems.append(Problem(MANIFEST, f"the root pseudo-task {ROOT_TASK} has no retained path; new "
                                          "tasks cannot start from the root", [ROOT_TASK]))
    for task in retained:
        if task != ROOT_TASK and task not in tasks:
            problems.append(Problem(MANIFEST, f"a retained path belongs to unknown task '{task}'", [task]))
    for cid, tasks_using in sorted(users.items()):
        if cid not in comps:
            slots = sorted({slot for t in tasks_using for slot, c in retained[t][1].items() if c == cid})
            problems.append(Problem(MANIFEST, f"component {cid} ({', '.join(slots)}) of a retained path is "
                                              "missing from the components table", _ordered(tasks_using, tasks)))
    for cid, (slot, _, creator) in sorted(comps.items()):
        if cid not in users:
            problems.append(Problem(MANIFEST, f"component {cid} ({slot}, created by {creator}) is used by no "
                                              "retained path (a missed garbage collection)"))
    for task, (commit_id, _) in sorted(checks.items()):
        if task not in retained:
            problems.append(Problem(MANIFEST, f"the no-forgetting reference of commit {commit_id} belongs to "
                                              f"'{task}', which has no retained path", [task]))
    for task in committed:
        if task not in checks:
            problems.append(Problem(MANIFEST, f"task '{task}' has no no-forgetting reference (checks row); "
                                              "it cannot be verified", [task]))
    return problems


def _references(tasks: dict[str, str], comps: dict[str, Any], checks: dict[str, Any],
                users: dict[str, set[str]]) -> dict[str, list[tuple[str, list[str]]]]:
    """{blob: [(what references it, the tasks that touches)]} of every referenced blob."""
    refs: dict[str, list[tuple[str, list[str]]]] = {}
    for cid, (slot, blob, _) in comps.items():
        refs.setdefault(blob, []).append((f"component {cid} ({slot})", _ordered(users.get(cid, ()), tasks)))
    for task, blob in tasks.items():
        refs.setdefault(blob, []).append((f"the data of task '{task}'", [task]))
    for task, (_, blob) in checks.items():
        refs.setdefault(blob, []).append((f"the reference logits of task '{task}'", [task]))
    return refs


def _blob_problems(store: Store, refs: dict[str, list[tuple[str, list[str]]]],
                   tasks: dict[str, str]) -> list[Problem]:
    """Every referenced blob exists and hashes to its name."""
    problems: list[Problem] = []
    for sha, owners in sorted(refs.items()):
        what = " and ".join(o[0] for o in owners)
        touched = _ordered({t for o in owners for t in o[1]}, tasks)
        bad = _check_blob(store.blobs.root, sha)
        if bad is not None:
            kind, detail = bad
            problems.append(Problem(kind, f"blob {sha[:12]} of {what} {detail}", touched))
    return problems


def fix_store(store: Store, *, min_age_s: float = FIX_MIN_AGE_S) -> FixReport:
    """Delete leftovers (orphaned blobs, `.tmp-*` files, scratch folders of finished runs) older than
    `min_age_s`, while holding the manifest's write lock so that no commit can start referencing one
    of them meanwhile. Never deletes anything the manifest references."""
    removed: list[str] = []
    kept: list[str] = []
    now = time.time()
    with store.manifest.transaction():
        referenced = store.manifest.referenced_blobs()
        for problem in _leftovers(store, referenced):
            if problem.kind != ORPHAN or problem.path is None:
                continue
            target = Path(problem.path)
            try:
                age = now - target.stat().st_mtime
            except OSError:
                continue
            if age < min_age_s:
                kept.append(str(target))
                continue
            try:
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            except OSError:
                kept.append(str(target))
                continue
            removed.append(str(target))
    return FixReport(removed, kept)


# ---- pieces ------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _ordered(names: Any, tasks: dict[str, str]) -> list[str]:
    """Tasks in store order, the root first, unknown names last."""
    names = set(names)
    order = [ROOT_TASK, *tasks]
    return [t for t in order if t in names] + sorted(names - set(order))


def _read_manifest(db: sqlite3.Connection, problems: list[Problem]) -> dict[str, Any]:
    """The rows verify needs, read defensively (one bad row is one problem, not a crash)."""
    integrity = db.execute("PRAGMA quick_check").fetchall()
    if integrity != [("ok",)]:
        detail = "; ".join(str(r[0]) for r in integrity[:3])
        problems.append(Problem(MANIFEST, f"the manifest database is damaged ({detail}); restore "
                                          "manifest.sqlite from a backup", [ROOT_TASK]))
    tasks = {r[0]: r[1] for r in db.execute("SELECT name, data_blob FROM tasks ORDER BY position")}
    comps = {r[0]: (r[1], r[2], r[3]) for r in db.execute("SELECT id, slot, blob, task FROM components")}
    retained: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {}
    for task, path_id in db.execute("SELECT task, path_id FROM retained").fetchall():
        row = db.execute("SELECT components, hparams FROM paths WHERE id=?", (path_id,)).fetchone()
        if row is None:
            problems.append(Problem(MANIFEST, f"the retained path {path_id} of '{task}' is missing from the "
                                              "paths table", [task]))
            continue
        try:
            path_comps, hparams = json.loads(row[0]), json.loads(row[1])
            if not isinstance(path_comps, dict) or not all(isinstance(v, str) for v in path_comps.values()):
                raise ValueError("components is not a slot -> id map")
        except ValueError as exc:
            problems.append(Problem(MANIFEST, f"the retained path {path_id} of '{task}' is unreadable "
                                              f"({_one_line(exc)})", [task]))
            continue
        retained[task] = (path_id, path_comps, hparams)
    checks = {r[0]: (r[1], r[2]) for r in db.execute("SELECT task, commit_id, logits_blob FROM checks")}
    return {"tasks": tasks, "components": comps, "retained": retained, "checks": checks}


def _check_blob(root: Path, sha: str) -> tuple[str, str] | None:
    """None when the blob exists and hashes to its name, else (kind, what is wrong)."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha or ""):
        return MANIFEST, f"has an invalid name in the manifest ({sha!r})"
    path = root / sha[:2] / f"{sha}.safetensors"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return MISSING, "is missing"
    except OSError as exc:
        return CORRUPT, f"cannot be read ({exc.strerror or exc})"
    if digest.hexdigest() != sha:
        return CORRUPT, f"is corrupted: its {size:,} bytes do not hash to its name (truncated or edited)"
    return None


def _leftovers(store: Store, referenced: set[str]) -> list[Problem]:
    """Files under blobs/ that nothing references, temporary files, scratch of finished runs."""
    out: list[Problem] = []
    root = store.blobs.root
    if root.is_dir():
        for dirpath, _, filenames in os.walk(root):
            for name in sorted(filenames):
                file = Path(dirpath) / name
                rel = file.relative_to(store.folder)
                if name.startswith(".tmp-"):
                    out.append(Problem(ORPHAN, f"leftover temporary file {rel} of an interrupted write; "
                                               "`mupath verify --fix` deletes it", path=str(file)))
                elif _BLOB_NAME.match(name) and file.parent == root / name[:2]:
                    if name[:64] not in referenced:
                        out.append(Problem(ORPHAN, f"orphaned blob {rel} ({_size(file)}) is referenced by "
                                                   "nothing; `mupath verify --fix` deletes it", path=str(file)))
                else:
                    out.append(Problem(STRAY, f"unexpected file {rel} in the blob folder; mupath did not write "
                                              "it, move it elsewhere"))
    scratch = store.folder / "scratch"
    if scratch.is_dir():
        status = {r[0]: r[1] for r in store.manifest.db.execute("SELECT id, status FROM runs")}
        for entry in sorted(scratch.iterdir()):
            if status.get(entry.name) != "running":
                out.append(Problem(ORPHAN, f"leftover scratch folder {entry.relative_to(store.folder)} of a "
                                           "finished run; `mupath verify --fix` deletes it", path=str(entry)))
    return out


def _size(file: Path) -> str:
    try:
        return f"{file.stat().st_size:,} bytes"
    except OSError:
        return "unreadable"


def _rerun(store: Store, checks: dict[str, tuple[int, str]]) -> tuple[list[str], list[Problem]]:
    """Re-run each task on its test images in a fresh read-only Store (no cached modules) and compare with its
    reference logits bit for bit, as Store.check_immutability does; one task's failure is one problem."""
    fresh = Store.open(store.folder, read_only=True)
    checked: list[str] = []
    problems: list[Problem] = []
    try:
        retained = fresh.manifest.retained()
        for task, (commit_id, logits_blob) in checks.items():
            try:
                path = retained[task]
                ref = fresh.blobs.get_tensors(logits_blob)["logits"]
                now = fresh.test_logits(task, path, fresh.build_model(path))
            except MupathError as exc:
                problems.append(Problem(CHECK_FAILED, f"task '{task}' could not be re-run: {exc}", [task]))
                continue
            except Exception as exc:        # a damaged manifest row must not stop the other checks
                problems.append(Problem(CHECK_FAILED, f"task '{task}' could not be rebuilt ({_one_line(exc)})",
                                        [task]))
                continue
            if now.shape != ref.shape or not torch.equal(now, ref):
                diff = (now - ref).abs().max().item() if now.shape == ref.shape else float("nan")
                problems.append(Problem(FORGETTING, f"task '{task}' no longer reproduces its commit {commit_id} "
                                                    f"(max logit difference {diff:.3g})", [task]))
                continue
            checked.append(task)
    finally:
        fresh.close()
    return checked, problems
