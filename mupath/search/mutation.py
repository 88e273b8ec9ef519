"""Child creation (µ2Net `Path.clone` + mutations): copy the parent's hyperparameters, move some one
step in their ordered lists, maybe insert identity adapters, change the depth, then pick every
component by walking up the ancestry: owned components are always copied, frozen ones are shared
unless the clone mutation fires (always for the family's `force_clone` slots, e.g. the ViT's final
norm (EfficientNet has none), and for a random-init root's components: `clone_root`), the head is
this task's or a new one.
Slot layout, adapters and fresh components come from the
root's family (mupath/model/families).

Per-action probabilities (µ2Net+ `_mu_|<action>`): a default hyperparameter `_mu_|clone:<slot>` or
`_mu_|add:adapter_<i>` replaces µ for that one action, e.g. 0 keeps the bottom of a CNN root frozen
(bounded compute: its activations stay cacheable). Unlike µ2Net+ they are fixed settings, not learned."""
from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from mupath.model.components import FRESH_KINDS
from mupath.model.families import VIT, RootFamily
from mupath.model.families.base import BodyLayout
from mupath.runtime.jobs import SlotInit, SlotJob
from mupath.search.space import (
    LORA_RANK_DEFAULT,
    LORA_RANK_VALUES,
    SearchSpace,
    action_mu,
    is_data_key,
    is_model_key,
    kind_mu,
)
from mupath.store.records import CandidateComponent, ComponentRecord, PathRecord

CompInfo = CandidateComponent     #: the name before issue 21


def committed_infos(records: Mapping[str, ComponentRecord]) -> dict[str, CandidateComponent]:
    """{id: CandidateComponent} of the store's components (`manifest.components()`)."""
    return {cid: CandidateComponent.committed(c) for cid, c in records.items()}


SlotPlan = SlotJob     #: one slot of a child: the record its candidate job carries


@dataclasses.dataclass
class ChildPlan:
    path: PathRecord
    slots: list[SlotPlan]
    mutations: dict[str, Any]


def incremental(value: Any, values: list[Any], rng: random.Random) -> Any:
    """Move one step up or down the ordered list (p = 0.5 each), clamped at the ends."""
    idx = values.index(value) if value in values else min(
        range(len(values)), key=lambda i: abs(float(values[i]) - float(value)) if _numeric(values[i]) else 0)
    idx = max(0, min(len(values) - 1, idx + (1 if rng.random() < 0.5 else -1)))
    return values[idx]


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def sample_ds_hparams(best: Mapping[str, Any] | None, space: SearchSpace, rng: random.Random) -> dict[str, Any]:
    """Generation-shared data hyperparameters: defaults, overwritten by the current best path's,
    then each mutated with probability of the default µ (reference `sample_ds_hparams`)."""
    hp = {k: v for k, v in space.defaults.items() if is_data_key(k)}
    if best:
        hp.update({k: v for k, v in best.items() if is_data_key(k)})
    mu = float(space.defaults["_mu_"])
    for key in sorted(space.ranges):
        if is_data_key(key) and rng.random() < mu:
            hp[key] = incremental(hp[key], space.ranges[key], rng)
    return hp


def mutate_hparams(parent: Mapping[str, Any], space: SearchSpace,
                   rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copy the parent's hparams and move each model key one step with probability µ. `_mu_` sorts
    first and moves first; every later draw uses the child's new µ, as the reference's `clone` does
    (it reads `new_hparams['_mu_']` at each draw)."""
    hp = copy.deepcopy(dict(parent))
    changed: dict[str, Any] = {}
    for key in sorted(space.ranges):
        if is_model_key(key) and rng.random() < float(hp["_mu_"]):
            new = incremental(hp[key], space.ranges[key], rng)
            if new != hp[key]:
                changed[key] = [hp[key], new]
                hp[key] = new
    return hp, changed


@dataclasses.dataclass
class Lineage:
    """Read access the child builder needs: path and component lookups, ownership, ids."""

    paths: Mapping[str, PathRecord]
    comps: Mapping[str, CompInfo]
    trainable: Callable[[str], bool]          # does the current task own this component?
    root_path: PathRecord
    new_id: Callable[[str], str]
    family: RootFamily = VIT
    meta: Mapping[str, int] = dataclasses.field(default_factory=dict)
    #: components a child always clones, never shares frozen (a random-init root's: `clone_root`)
    always_clone: frozenset[str] = frozenset()

    def root_configs(self) -> dict[str, dict[str, Any]]:
        return {slot: self.comps[cid].config for slot, cid in self.root_path.components.items()}

    def chain(self, start: PathRecord) -> list[PathRecord]:
        """start, its parent, grandparent ... ending with the root path (orphans fall back to it)."""
        out: list[PathRecord] = []
        seen: set[str] = set()
        cur: PathRecord | None = start
        while cur is not None and cur.id not in seen:
            out.append(cur)
            seen.add(cur.id)
            cur = self.paths.get(cur.parent_id) if cur.parent_id else None
        if out[-1].id != self.root_path.id:
            out.append(self.root_path)
        return out


def make_child(parent: PathRecord, task: str, num_classes: int, ds_hp: Mapping[str, Any],
               space: SearchSpace, lineage: Lineage, *, rng: random.Random, mutate_adapters: bool,
               mutate: bool = True, insert: Mapping[str, Sequence[int]] | None = None,
               set_hparams: Mapping[str, Any] | None = None, clone: Collection[str] = ()) -> ChildPlan:
    """A mutated child of `parent` for `task` (see module docstring). `mutate=False` gives the
    unmutated child (`head_first`): the parent's model hyperparameters and body, sharing every frozen
    component it may share, with only what must be new (a head for another task's parent, the
    family's always-cloned slots, a random-init root's components). `insert`: module kinds (adapter,
    ssf, lora) put before these blocks as well: the family's known-good recipes, with `set_hparams`
    (a recipe's learning rate) set on the child; `clone`: slots whose frozen component the child copies
    and trains (a recipe's modules where the parent already has them)."""
    base = {k: v for k, v in space.defaults.items()}
    base.update(parent.hparams)
    base.update(ds_hp)
    base["num_classes"] = num_classes
    hp, changed = mutate_hparams(base, space, rng) if mutate else (copy.deepcopy(base), {})
    for key, value in (set_hparams or {}).items():
        if hp.get(key) != value:
            changed[key] = [hp.get(key), value]
            hp[key] = value
    mu = float(hp["_mu_"])     # the child's µ (moved first) decides its adapters and clones
    move_layers(hp, space, rng=rng, mu=mu, mutate=mutate, mutate_adapters=mutate_adapters, insert=insert,
                changed=changed)
    wanted = wanted_slots(hp, num_classes, lineage)
    chain = lineage.chain(parent)
    slots: list[SlotPlan] = []
    cloned: list[str] = []
    for slot, (kind, config) in wanted.items():
        found = find_component(slot, config, chain, lineage)
        if found is None:
            slots.append(fresh_slot(slot, kind, config, lineage, rng))
            continue
        comp = lineage.comps[found]
        clone_mu = action_mu(space, f"clone:{slot}", mu, hp)
        if (lineage.trainable(found) or slot in lineage.family.force_clone
                or (found in lineage.always_clone and clone_mu > 0) or slot in clone
                or (mutate and rng.random() < clone_mu)):
            if not lineage.trainable(found):
                cloned.append(slot)
            slots.append(SlotPlan(slot, lineage.new_id("c"), kind, dict(comp.config), True, SlotInit.copy(found)))
        else:
            slots.append(SlotPlan(slot, found, kind, dict(comp.config), False))
    if cloned:
        changed["cloned"] = cloned
    child = PathRecord(id=lineage.new_id("p"), task=task, parent_id=parent.id,
                       components={s.slot: s.id for s in slots}, hparams=hp,
                       metrics={"mutations": changed, "parent_task": parent.task})
    return ChildPlan(child, slots, changed)


def move_layers(hp: dict[str, Any], space: SearchSpace, *, rng: random.Random, mu: float, mutate: bool,
                mutate_adapters: bool, insert: Mapping[str, Sequence[int]] | None, changed: dict[str, Any]) -> None:
    """The child's module layers, in place: adapters, scale-and-shift and low-rank deltas moved at µ (when
    `mutate`), the recipes' `insert`ions added, the deltas' rank moved; every move recorded in `changed`."""
    num_layers = int(hp["num_layers"])
    adapters = sorted(i for i in hp.get("adapter_layers", []) if i < num_layers)
    if mutate_adapters and mutate:
        adapters = mutate_layers(adapters, "adapter", num_layers, space=space, hp=hp, mu=mu, rng=rng,
                                 changed=changed)
    hp["adapter_layers"] = sorted(adapters)
    for kind in ("ssf", "lora"):
        layers = sorted(i for i in hp.get(f"{kind}_layers", []) if i < num_layers)
        if mutate:
            layers = mutate_layers(layers, kind, num_layers, space=space, hp=hp, mu=mu, rng=rng, changed=changed)
        if layers or f"{kind}_layers" in hp:     # a path without the kind records nothing of it
            hp[f"{kind}_layers"] = layers
    for kind, blocks in (insert or {}).items():
        added = sorted({i for i in blocks if i < num_layers} - set(hp.get(f"{kind}_layers", [])))
        hp[f"{kind}_layers"] = sorted(set(hp.get(f"{kind}_layers", [])) | set(added))
        changed[f"{kind}s_added"] = added
    if mutate and hp.get("lora_layers") and rng.random() < mu:
        ranks = list(space.ranges.get("lora_rank", LORA_RANK_VALUES))
        rank = incremental(int(hp.get("lora_rank", LORA_RANK_DEFAULT)), ranks, rng)
        if rank != hp.get("lora_rank", LORA_RANK_DEFAULT):
            changed["lora_rank"] = [hp.get("lora_rank", LORA_RANK_DEFAULT), rank]
        hp["lora_rank"] = rank


def mutate_layers(layers: list[int], kind: str, num_layers: int, *, space: SearchSpace, hp: Mapping[str, Any],
                  mu: float, rng: random.Random, changed: dict[str, Any]) -> list[int]:
    """Insert `kind` before each block that lacks it and remove it where it is, each at its own
    probability (`kind_mu`); a probability of 0 draws nothing, so a kind that is off leaves the random
    stream, and every choice after it, as they were. The one exception is the reference's own move,
    inserting an adapter: it draws even at 0, as it always did, so that a `_mu_|add:adapter_<i>=0`
    override keeps the stream of a run without it (docs/design.md, "Search")."""
    out = list(layers)
    for i in range(num_layers):
        verb = "drop" if i in out else "add"
        p = kind_mu(space, verb, kind, i, mu, hp)
        if (p > 0 or (kind == "adapter" and verb == "add")) and rng.random() < p:
            if verb == "add":
                out.append(i)
            else:
                out.remove(i)
            changed.setdefault(f"{kind}s_{'added' if verb == 'add' else 'removed'}", []).append(i)
    return sorted(out)


def wanted_slots(hp: Mapping[str, Any], num_classes: int, lineage: Lineage) -> dict[str, tuple[str, dict[str, Any]]]:
    """{slot: (kind, config)} of a path with hyperparameters `hp` (the family's layout; the root's
    numbers, e.g. its patch size, come from `lineage.meta`)."""
    return lineage.family.wanted_slots(BodyLayout.of(hp), num_classes, int(hp["ds_image_size"]),
                                       root=lineage.root_configs(), meta=dict(lineage.meta))


def find_component(slot: str, config: dict[str, Any], chain: list[PathRecord], lineage: Lineage) -> str | None:
    """Nearest ancestor's component for `slot` whose shape fits; a head only if this task owns it."""
    for path in chain:
        cid = path.components.get(slot)
        if cid is None:
            continue
        comp = lineage.comps[cid]
        if slot == "head" and not lineage.trainable(cid):
            continue
        if comp.config != config:
            continue        # image size (pos_embed), adapter width or class count changed
        return cid
    return None


def fresh_slot(slot: str, kind: str, config: dict[str, Any], lineage: Lineage, rng: random.Random) -> SlotPlan:
    """A component no ancestor has: identity adapter, zero head, or what the family makes (the ViT's
    resampled root position embedding, always trainable as in µ2Net)."""
    resample = lineage.family.resample_source(slot, kind, config, lineage.root_path.components)
    if resample is not None:
        return SlotPlan(slot, lineage.new_id("c"), kind, config, True, SlotInit.resample(*resample))
    if kind in FRESH_KINDS:
        return SlotPlan(slot, lineage.new_id("c"), kind, config, True, SlotInit.fresh(rng.randrange(2 ** 31)))
    raise ValueError(f"no ancestor has a component for slot {slot}")
