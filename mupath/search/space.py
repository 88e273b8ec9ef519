"""The search space: every hyperparameter's ordered list of values and default. Lists follow the
reference (µ2Net `exp_config_add_auto_tune_v2`, muNet for adapter width and image size); the choices
that differ are documented in docs/design.md ("Method notes")."""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mupath.errors import ConfigError
from mupath.model.families.base import BodyLayout
from mupath.model.root import MAX_IMAGE_SIZE

if TYPE_CHECKING:
    from mupath.search.settings import EvolveSettings
    from mupath.store.store import Store

MU_VALUES = [round(0.10 + 0.02 * i, 2) for i in range(11)]              # 0.10 .. 0.30
LR_VALUES = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
WARMUP_VALUES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4]
MOMENTUM_VALUES = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99]
AREA_VALUES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
ASPECT_VALUES = [0.25, 0.5, 0.75, 1.0]
DELTA_VALUES = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2]
ADAPTER_VALUES = [8, 16, 32, 64, 128]
LORA_RANK_VALUES = [1, 2, 4, 8, 16, 32]
LORA_RANK_DEFAULT = BodyLayout.lora_rank     #: what a path without `lora_rank` is built with
#: kinds a mutation inserts at a block (and may remove), with the probability of each insertion when no
#: `_mu_|add:<kind>` or `_mu_|add:<kind>_<i>` says otherwise: adapters at µ (the reference); the newer
#: kinds off until a setting turns them on (so the reference's search is the default search)
INSERTED_KINDS = {"adapter": None, "ssf": 0.0, "lora": 0.0}
#: hyperparameters a path has only once a kind is in it (a path written before has none: the layout
#: reads them as empty), so they are known keys without being defaults
OPTIONAL_KEYS = {"ssf_layers": [], "lora_layers": [], "lora_rank": LORA_RANK_DEFAULT}

#: keys mutated per child with probability µ (reference: `_mu_`, `num_layers`, `adapter_dim`, `opt_*`)
def is_model_key(key: str) -> bool:
    """Keys a child moves with probability µ when they have a range; a mutation action's own
    probability (`_mu_|add:lora`) is one once a range is given for it: µ2Net+'s self-tuning."""
    return key in ("_mu_", "num_layers", "adapter_dim") or key.startswith("opt_") or is_action_key(key)


MU_ACTION_PREFIX = "_mu_|"
_ACTION = re.compile(r"(clone:[a-z_]+(_\d+)?|(add|drop):(adapter|ssf|lora)(_\d+)?)")


def is_action_key(key: str) -> bool:
    """`_mu_|clone:<slot>`, `_mu_|add:<kind>[_<i>]` or `_mu_|drop:<kind>[_<i>]` (kind: adapter, ssf or
    lora; without `_<i>`: at every block): the probability of one mutation action."""
    return key.startswith(MU_ACTION_PREFIX) and bool(_ACTION.fullmatch(key[len(MU_ACTION_PREFIX):]))


def action_mu(space: SearchSpace, action: str, mu: float, hp: Mapping[str, Any] | None = None) -> float:
    """Probability of one mutation action: the child's own `_mu_|action` (`hp`, where a range lets it
    self-tune), else its default when set, else µ."""
    key = MU_ACTION_PREFIX + action
    if hp is not None and key in hp:
        return float(hp[key])
    return float(space.defaults.get(key, mu))


def kind_mu(space: SearchSpace, verb: str, kind: str, index: int, mu: float,
            hp: Mapping[str, Any] | None = None) -> float:
    """Probability of inserting (`verb` add) or removing (drop) a `kind` at block `index`:
    `_mu_|<verb>:<kind>_<index>`, else `_mu_|<verb>:<kind>`, else the kind's default (µ for an adapter's
    insertion, 0 for the newer kinds' and for every removal)."""
    default = INSERTED_KINDS[kind]
    fallback = 0.0 if verb == "drop" else mu if default is None else default
    return action_mu(space, f"{verb}:{kind}_{index}", action_mu(space, f"{verb}:{kind}", fallback, hp), hp)


def frozen_floor(space: SearchSpace, embed_slots: tuple[str, ...], depth: int, adapters: bool) -> int:
    """How many leading blocks no candidate can clone or adapt (their per-action probabilities are 0),
    provided no embedding slot can be cloned either: the run's always-frozen bottom, a checkpoint for
    the activation cache."""
    def never(action: str, probability: float) -> bool:     # at its default and anywhere in its range
        return probability == 0 and not any(space.ranges.get(MU_ACTION_PREFIX + action, []))

    if not all(never(f"clone:{slot}", action_mu(space, f"clone:{slot}", 1.0)) for slot in embed_slots):
        return 0
    n = 0
    while n < depth and never(f"clone:block_{n}", action_mu(space, f"clone:block_{n}", 1.0)) and all(
            never(f"add:{kind}_{n}", kind_mu(space, "add", kind, n, 1.0)) and never(f"add:{kind}", 0.0)
            for kind in INSERTED_KINDS if kind != "adapter" or adapters):
        n += 1
    return n


def is_data_key(key: str) -> bool:
    """`ds_*` keys are sampled once per generation and shared by its candidates."""
    return key.startswith("ds_")


@dataclasses.dataclass
class SearchSpace:
    """Ordered value lists (`ranges`) and defaults. A key without a range is never mutated."""

    ranges: dict[str, list[Any]]
    defaults: dict[str, Any]

    def validate(self) -> None:
        for key, values in self.ranges.items():
            if not values:
                raise ConfigError(f"search range for '{key}' is empty; give at least one value")
            if key in self.defaults and self.defaults[key] not in values:
                raise ConfigError(f"default {key}={self.defaults[key]!r} is not in its range {values}; "
                                  f"add it to the range or change the default")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def default_space(root_depth: int, image_size: int, patch_size: int = 0, depths: list[int] | None = None,
                  sizes: list[int] | None = None) -> SearchSpace:
    """Defaults for a root of `root_depth` blocks at `image_size` with `patch_size` patches (0: none).
    `depths` / `sizes`: the root family's `num_layers` and image-size choices when they differ from
    the ViT's (1..depth; one patch smaller or the root's size). Every root starts from AdamW at 1e-3,
    the pretrained one too: the reference's SGD at 0.01 cost the demo 2 points on fashion_mnist
    (docs/design.md, "Method notes")."""
    # Never larger than the root's by default: compute per task stays bounded by the root's (users may
    # widen the range with --range ds_image_size=...).
    if sizes is None:
        sizes = sorted({s for s in (image_size - patch_size, image_size) if s >= max(patch_size, 1)})
    ranges: dict[str, list[Any]] = {
        "_mu_": MU_VALUES,
        "num_layers": list(depths) if depths else list(range(1, root_depth + 1)),
        "adapter_dim": ADAPTER_VALUES,
        "opt_name": ["sgd", "adamw"],
        "opt_lr": LR_VALUES,
        "opt_lr_warmup_ratio": WARMUP_VALUES,
        "opt_momentum": MOMENTUM_VALUES,
        "opt_nesterov": [False, True],
        "ds_image_size": sizes,
        "ds_crop": [False, True],
        "ds_area_range_min": AREA_VALUES,
        "ds_aspect_ratio_range_min": ASPECT_VALUES,
        "ds_flip_left_right": [False, True],
        "ds_brightness_delta": DELTA_VALUES,
        "ds_contrast_delta": DELTA_VALUES,
        "ds_saturation_delta": DELTA_VALUES,
        "ds_hue_delta": DELTA_VALUES,
    }
    defaults: dict[str, Any] = {
        "_mu_": 0.2, "num_layers": root_depth, "adapter_dim": 32, "adapter_layers": [],
        "opt_name": "adamw", "opt_lr": 1e-3, "opt_lr_schedule": "cosine", "opt_lr_warmup_ratio": 0.05,
        "opt_momentum": 0.9, "opt_nesterov": False,
        "ds_image_size": image_size, "ds_crop": False, "ds_area_range_min": 0.5,
        "ds_aspect_ratio_range_min": 0.75, "ds_flip_left_right": False,
        "ds_brightness_delta": 0.0, "ds_contrast_delta": 0.0, "ds_saturation_delta": 0.0,
        "ds_hue_delta": 0.0,
    }
    return SearchSpace(ranges, defaults)


def parse_key_values(items: list[str], what: str) -> dict[str, str]:
    """Repeatable `KEY=VALUE` options (`what` names the option in the error) as {key: raw value}; the
    CLI and the benchmarks parse them the same way."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} '{item}' must look like KEY=VALUE")
        out[key.strip()] = value
    return out


def parse_value(text: str) -> Any:
    """CLI value parsing: JSON when it parses (numbers, true/false), else the raw string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()


def _number(lo: float, hi: float, *, integer: bool = False, lo_open: bool = False,
            hi_open: bool = False) -> tuple[str, Callable[[Any], bool]]:
    """(what is expected, test) for a number in an interval; booleans are not numbers here."""
    kind = "an integer" if integer else "a number"
    text = f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            return False                 # 32.0 is no layer width: the model code needs an int
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return text, ok


_BOOL = ("true or false", lambda v: isinstance(v, bool))
_BLOCKS = ("a list of block indices", lambda v: isinstance(v, list) and all(
    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v))
_UNIT = _number(0, 1)
#: what each hyperparameter's values may be: checked before a run starts, so a bad --hparam/--range is a
#: one-line error instead of a failure inside every candidate after the training budget is spent
VALUE_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "_mu_": _UNIT,
    "adapter_dim": _number(1, 4096, integer=True),
    "adapter_layers": _BLOCKS,
    "ssf_layers": _BLOCKS,
    "lora_layers": _BLOCKS,
    "lora_rank": _number(1, 1024, integer=True),
    "opt_name": ("sgd or adamw", lambda v: v in ("sgd", "adamw")),
    "opt_lr": _number(0, 10, lo_open=True),
    "opt_lr_schedule": ("cosine or constant", lambda v: v in ("cosine", "constant")),
    "opt_lr_warmup_ratio": _number(0, 1, hi_open=True),
    "opt_momentum": _number(0, 1, hi_open=True),
    "opt_nesterov": _BOOL,
    "ds_image_size": _number(1, MAX_IMAGE_SIZE, integer=True),
    "ds_crop": _BOOL,
    "ds_flip_left_right": _BOOL,
    "ds_area_range_min": _number(0, 1, lo_open=True),
    "ds_aspect_ratio_range_min": _number(0, 1, lo_open=True),
    "ds_brightness_delta": _UNIT,
    "ds_contrast_delta": _UNIT,
    "ds_saturation_delta": _UNIT,
    "ds_hue_delta": _number(0, 0.5),
}


def check_value(key: str, value: Any, space: SearchSpace) -> None:
    """Raise ConfigError naming the key, the bad value and what it may be. `num_layers` may be any
    depth the root offers (its default range in `space`)."""
    if key == "num_layers":
        allowed = space.ranges.get("num_layers", [])
        if isinstance(value, bool) or value not in allowed:
            raise ConfigError(f"num_layers={value!r} is not a depth this root offers; use one of {allowed}")
        return
    rule = VALUE_RULES.get(key)
    if rule and not rule[1](value):
        raise ConfigError(f"{key}={value!r} is invalid; it must be {rule[0]}")


#: keys a user's default pins (its range is dropped unless a range is given too): switching optimiser
#: mid-lineage keeps a learning rate sized for the other one
PINNED_BY_DEFAULT = frozenset({"opt_name"})


def customise(space: SearchSpace, defaults: dict[str, Any] | None = None,
              ranges: dict[str, list[Any]] | None = None) -> SearchSpace:
    """A copy of `space` with user overrides; unknown keys and values outside a key's domain
    (`VALUE_RULES`) are an error naming the known ones."""
    new = SearchSpace({k: list(v) for k, v in space.ranges.items()}, dict(space.defaults))
    known = set(space.defaults) | set(space.ranges) | set(OPTIONAL_KEYS)
    for key, values in (ranges or {}).items():
        if is_action_key(key):
            if not isinstance(values, (list, tuple)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
                raise ConfigError(f"the range of mutation probability {key} must be a list of numbers in [0, 1], "
                                  f"got {values!r}")
            if values:
                new.ranges[key] = sorted(float(v) for v in values)
                new.defaults.setdefault(key, new.ranges[key][0])    # no default given: start at the lowest
            continue
        if key not in known:
            raise ConfigError(f"unknown hyperparameter '{key}'; known: {', '.join(sorted(known))}")
        if not isinstance(values, (list, tuple)):
            raise ConfigError(f"the range of '{key}' must be a list of values, got {values!r}")
        for value in values:
            check_value(key, value, space)
        if not values:
            new.ranges.pop(key, None)     # an empty list switches the mutation of this key off
        else:
            new.ranges[key] = list(values)
    for key, value in (defaults or {}).items():
        if is_action_key(key):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ConfigError(f"mutation probability {key} must be a number in [0, 1], got {value!r}")
            new.defaults[key] = float(value)
            continue
        if key.startswith(MU_ACTION_PREFIX):
            raise ConfigError(f"unknown mutation action in '{key}'; use _mu_|clone:<slot>, "
                              "_mu_|add:<kind>[_<i>] or _mu_|drop:<kind>[_<i>] (kind: adapter, ssf or lora)")
        if key not in known:
            raise ConfigError(f"unknown hyperparameter '{key}'; known: {', '.join(sorted(known))}")
        check_value(key, value, space)
        new.defaults[key] = value
        if key in PINNED_BY_DEFAULT and key not in (ranges or {}):
            new.ranges.pop(key, None)     # `--hparam opt_name=sgd` means SGD, not SGD as a start
            continue
        if key in new.ranges and value not in new.ranges[key]:
            new.ranges[key] = sorted(set(new.ranges[key]) | {value}, key=lambda v: (str(type(v)), v))
    new.validate()
    return new


def search_space(store: Store, settings: EvolveSettings) -> SearchSpace:
    """The search space of a store's root with `settings`' hparams and ranges applied; an image size
    the root cannot take is a one-line error here, before any run row is written."""
    image_size = store.image_size
    meta = store.root_meta
    space = default_space(store.depth, image_size, store.patch_size,
                          depths=store.family.depth_choices(store.root_configs(), store.depth),
                          sizes=store.family.image_sizes(image_size, meta))
    space = customise(space, settings.hparams, settings.ranges)
    for size in [space.defaults["ds_image_size"], *space.ranges.get("ds_image_size", [])]:
        try:
            store.family.check_image_size(int(size), meta)
        except ConfigError as exc:
            raise ConfigError(f"ds_image_size={size} does not fit this root ({str(exc).split(';')[0]}); "
                              f"pick a size the root accepts, e.g. {image_size}") from None
    return space
