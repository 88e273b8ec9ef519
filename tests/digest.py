"""The behaviour digest: a small run's retained paths, the search's choices and every task's test logits,
as one sha256, and the tool that checks a refactor with it.

Float bits depend on the machine (torch, oneDNN and MKL pick kernels by ISA *and* vendor: the same
`AVX512` label gave different bits on an Intel Xeon and an AMD EPYC), so a digest is only ever compared
with another digest computed on the same machine: two runs of one seed, the in-process run against the
process pool, a reopened store against the live one (tests/test_digest.py), and the code before a
refactor against the code after it (this script):

    python tests/digest.py                      # print the digest of the working tree
    python tests/digest.py --against HEAD~1     # the working tree and HEAD~1, here, bit for bit

`--against` checks REF out into a temporary git worktree and runs this same script with that tree's
`mupath` first on the import path, so both digests come from one machine and one interpreter. It exits
1 when they differ: a change that claims to keep behaviour must exit 0.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TINY_ROOT = dict(root="vit_tiny_patch16_224", image_size=8, patch_size=4, depth=2, embed_dim=32,
                 num_heads=2, seed=0)
TINY_SETTINGS = dict(generations=2, candidates=2, steps_per_validation=15, validations=2, batch_size=32,
                     val_limit=200)
#: the scenario every digest is taken of: two tasks on the digits images, two task iterations each
DIGEST_SETTINGS = dict(TINY_SETTINGS, iterations=2)


def tasks() -> tuple:
    """digits (400 training images) and parity (is the digit even?) on the same images."""
    from mupath.data import Task, load_task
    d = load_task("digits", max_train=400)
    parity = Task.from_arrays("parity", d.train.images, d.train.labels % 2,
                              val=(d.validation.images, d.validation.labels % 2),
                              test=(d.test.images, d.test.labels % 2), class_names=["even", "odd"])
    return d, parity


def grow(folder: Path, digits=None, parity=None, **extra):
    """The digest's scenario, grown into a new store at `folder`; `extra` overrides evolve settings
    that must not change behaviour (workers, executor, threads_per_worker)."""
    import torch

    from mupath import System
    torch.set_num_threads(1)
    if digits is None or parity is None:
        digits, parity = tasks()
    system = System.create(folder, **TINY_ROOT)
    system.add_task(digits)
    system.add_task(parity)
    system.evolve(["digits", "parity"], **dict(DIGEST_SETTINGS, **extra))
    return system


def digest(system) -> str:
    """Every retained path (components, hparams, quality, parent), every commit's candidates and
    scores, and the bytes of every task's test logits, as one sha256."""
    from mupath.store.records import ROOT_TASK
    retained = system.manifest.retained()
    out: dict[str, object] = {}
    for task in system.tasks:
        path = retained[task]
        logits = system.logits(task, system.store.task_data(task)["test.x"].permute(0, 2, 3, 1).numpy())
        tried = [[t.path, t.mutations, t.score, t.best_val, t.entered]
                 for c in system.history(task) for t in c.info.tried or ()]
        out[task] = {"path": path.id, "parent": path.parent_id, "components": path.components,
                     "hparams": path.hparams, "quality": repr(path.quality), "tried": tried,
                     "logits": hashlib.sha256(np.ascontiguousarray(logits.numpy()).tobytes()).hexdigest()}
    comps = system.manifest.components()
    out["blobs"] = sorted(comps[c].blob for p in retained.values() for c in p.components.values())
    out["root"] = sorted(retained[ROOT_TASK].components.items())
    return hashlib.sha256(canonical_ids(json.dumps(out, sort_keys=True, default=str)).encode()).hexdigest()


def canonical_ids(text: str) -> str:
    """Path and component ids come from a stream seeded by the run id (a fresh uuid per run), so the
    same run twice names them differently; each id becomes its order of first appearance."""
    seen: dict[str, str] = {}
    return re.sub(r"\b[a-z]+[0-9a-f]{16}\b", lambda m: seen.setdefault(m.group(0), f"id{len(seen)}"), text)


def digest_of_tree(tree: Path | None) -> str:
    """The digest computed by a fresh interpreter importing `mupath` from `tree` (None: as installed)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, __file__, "--print", "--expect-tree", str(tree or "")], env=env,
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def against(ref: str) -> int:
    """Compare the working tree's digest with `ref`'s, on this machine; 0 when they are the same."""
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="mupath-digest-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-q", str(tree), ref], check=True)
        try:
            theirs = digest_of_tree(tree)
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False)
    ours = digest_of_tree(repo)
    print(f"{ref}: {theirs}\nworking tree: {ours}")
    if ours != theirs:
        print("behaviour changed: the retained paths, the search's choices or some task's logits differ")
        return 1
    print("same behaviour, bit for bit, on this machine")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", metavar="REF", help="a git commit to compare the working tree with")
    parser.add_argument("--print", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--expect-tree", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.against:
        return against(args.against)
    import mupath
    if args.expect_tree and not Path(mupath.__file__).resolve().is_relative_to(Path(args.expect_tree).resolve()):
        raise SystemExit(f"mupath imported from {mupath.__file__}, not from {args.expect_tree}")
    with tempfile.TemporaryDirectory(prefix="mupath-digest-") as tmp:
        print(digest(grow(Path(tmp) / "store")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
