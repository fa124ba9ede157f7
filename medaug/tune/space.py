"""Sweep files: parsing, ``--set`` overrides, validation, trial expansion and the Tune space.

A sweep file is YAML with these top-level keys::

    name: table1                    # experiment name (MLflow experiment, Tune run name)
    description: ...                # optional, one line
    data:     {...}                 # fixed settings, same keys as medaug/config.py
    pretrain: {...}
    eval:     {...}
    seed: 0
    space:                          # what varies; keys are dotted config keys
      pretrain.criterion: {grid: [instance, patient_same_study]}
      pretrain.crop_scale: {grid: [null, 0.95]}
      pretrain.lr: {loguniform: [1.0e-5, 1.0e-3]}     # continuous -> Optuna
      variants:                     # named bundles of settings that vary together
        - {name: distinct_studies, pretrain.criterion: patient_distinct_studies,
           pretrain.distinct_only: true}
    tune:
      metric: linear_select_auc_mean  # linear_select_auc_mean | e2e_select_auc_mean | knn_auc_best
      mode: max
      num_samples: 1                # grid: repeats (seed + r); Optuna: trials drawn
      max_concurrent: 2             # 0 = as many as resources allow
      resources: {cpu: 1, gpu: 0}   # the trial process (it runs evaluation); pretraining
                                    # workers ask for their own (pretrain.num_workers/use_gpu)
      asha: {metric: knn_auc, grace_period: 2, reduction_factor: 2}   # or null
      max_failures: 0               # automatic retries of a failed trial
    baselines: [imagenet, random]   # evaluated through the same harness, no pretraining

The trials are the Cartesian product of the grid keys and the variants (variants outermost),
repeated ``num_samples`` times; baselines come first.  When the space holds a continuous
range, Optuna draws ``num_samples`` trials instead and grid keys and variants become
categorical choices.

``--set`` overrides (``KEY=VALUE``, values parsed as YAML):

* ``data.*``, ``pretrain.*``, ``eval.*``, ``seed``: the fixed settings
  (``--set data.csv=/data/CheXpert-v1.0-small/train.csv``);
* ``space.<dotted key>=[a, b]``: replace (or add) a grid; ``space.<key>={loguniform: [lo, hi]}``
  a range; ``space.variants=[...]`` the variants;
* ``tune.*``, ``name``, ``description``, ``baselines``.

A fixed key that the space varies cannot be set (the space would silently win): set the space
key instead.  Every trial's resolved config is built with :func:`medaug.config.build_config`
before anything runs, so unknown keys, criteria, strategies and bad values fail at once.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medaug.config import (
    METHOD_SECTIONS,
    Config,
    PretrainConfig,
    build_config,
    flatten,
    parse_override,
    read_yaml,
)
from medaug.errors import MedaugError

# The config's own sections (data, pretrain, each method's, eval) and seed; the output is
# the sweep's to set.
FIXED_SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config)
                                        if f.name != "output")
SWEEP_KEYS: tuple[str, ...] = ("name", "description", *FIXED_SECTIONS, "space", "tune",
                               "baselines")
TUNE_KEYS: tuple[str, ...] = (
    "metric",
    "mode",
    "num_samples",
    "max_concurrent",
    "resources",
    "asha",
    "max_failures",
    "search_seed",
)
ASHA_KEYS: tuple[str, ...] = ("metric", "grace_period", "reduction_factor")
RESOURCE_KEYS: tuple[str, ...] = ("cpu", "gpu")
# What Tune compares trials on, and Optuna tunes on: scores of the selection set only.
METRICS: tuple[str, ...] = ("linear_select_auc_mean", "e2e_select_auc_mean", "knn_auc_best")
# Test-set scores, reported but never used to choose.
TEST_METRICS: tuple[str, ...] = ("linear_auc_mean", "e2e_auc_mean")
ASHA_METRICS: tuple[str, ...] = ("knn_auc",)
MODES: tuple[str, ...] = ("max", "min")
BASELINES: tuple[str, ...] = ("imagenet", "random")
RANGE_KINDS: tuple[str, ...] = ("loguniform", "uniform")
SPEC_KINDS: tuple[str, ...] = ("grid",) + RANGE_KINDS
# Param names that are not config keys: which bundle, which repeat, which baseline.
VARIANT, REPEAT, BASELINE = "variant", "repeat", "baseline"

_SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"


@dataclass(frozen=True)
class Range:
    """A continuous search range for one float setting."""

    kind: str  # loguniform | uniform
    low: float
    high: float


@dataclass(frozen=True)
class Variant:
    """A named bundle of settings that vary together (dotted key -> value)."""

    name: str
    overrides: dict[str, Any]


@dataclass
class Space:
    """What a sweep varies: grids, continuous ranges and named variants."""

    grid: dict[str, list[Any]] = field(default_factory=dict)
    ranges: dict[str, Range] = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)

    @property
    def continuous(self) -> bool:
        return bool(self.ranges)

    def keys(self) -> list[str]:
        """Every config key the space touches (grid, ranges, variant contents)."""
        out = list(self.grid) + list(self.ranges)
        for variant in self.variants:
            out += [k for k in variant.overrides if k not in out]
        return out


@dataclass
class AshaSettings:
    """Asynchronous successive halving on a per-epoch pretraining metric."""

    metric: str = "knn_auc"
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class TuneSettings:
    """How Ray Tune runs the trials."""

    metric: str = "linear_select_auc_mean"
    mode: str = "max"
    num_samples: int = 1
    max_concurrent: int = 0
    cpu: float = 1.0
    gpu: float = 0.0
    asha: AshaSettings | None = None
    max_failures: int = 0
    search_seed: int = 0


@dataclass(frozen=True)
class TrialSpec:
    """One trial: its deterministic key (folder and MLflow run name) and what it sets.

    ``params`` maps dotted config keys to values, plus ``variant`` (bundle name), ``repeat``
    (seed offset) or ``baseline`` (evaluation-only trial) where they apply.
    """

    key: str
    params: dict[str, Any]
    label: str

    @property
    def baseline(self) -> str | None:
        return self.params.get(BASELINE)


@dataclass
class SweepConfig:
    """A parsed, validated sweep file (plus overrides)."""

    name: str
    base: dict[str, Any]  # nested data / pretrain / eval / seed settings
    space: Space
    tune: TuneSettings
    baselines: list[str] = field(default_factory=list)
    description: str = ""
    forced: dict[str, Any] = field(default_factory=dict)  # applied after params (smoke runs)
    source: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # the file after overrides

    # -- trials ---------------------------------------------------------------------------

    def variant(self, name: str) -> Variant:
        for v in self.space.variants:
            if v.name == name:
                return v
        valid = ", ".join(v.name for v in self.space.variants)
        raise MedaugError(f"sweep {self.name}: unknown variant {name!r}; valid: {valid}")

    def resolve(self, params: dict[str, Any], output: str | None = None) -> Config:
        """The full config of the trial with ``params`` (base, then params, then forced)."""
        settings = copy.deepcopy(self.base)
        dotted: dict[str, Any] = {}
        if params.get(VARIANT) is not None:
            dotted.update(self.variant(params[VARIANT]).overrides)
        dotted.update({k: v for k, v in params.items() if k not in (VARIANT, REPEAT, BASELINE)})
        # Shallow keys first: a criterion's name is set before the keys varied inside it.
        for key, value in sorted(dotted.items(), key=lambda kv: kv[0].count(".")):
            _deep_set(settings, key.split("."), value)
        if params.get(REPEAT):
            settings["seed"] = int(settings.get("seed", 0)) + int(params[REPEAT])
        if params.get(BASELINE) == "imagenet":
            _deep_set(settings, ["pretrain", "init"], "imagenet")
        forced = copy.deepcopy(self.forced)
        # A method's own section is forced only on trials of that method; a sweep that varies
        # the method holds each method's section in its base, and a trial keeps its own.
        method = (settings.get("pretrain") or {}).get("method", PretrainConfig.method)
        for section in METHOD_SECTIONS:
            if section != method:
                forced.pop(section, None)
                if "pretrain.method" in self.space.keys():
                    settings.pop(section, None)
        _deep_merge(settings, forced)
        if output is not None:
            settings["output"] = output
        return build_config(settings)

    def grid_trials(self) -> list[TrialSpec]:
        """Every trial of a grid sweep, in a fixed order (baselines first)."""
        if self.space.continuous:
            raise MedaugError(
                f"sweep {self.name}: the space has continuous ranges; trials are drawn by Optuna"
            )
        trials = [self.baseline_trial(name) for name in self.baselines]
        for params in self._grid_params():
            trials.append(self.trial(params))
        keys = [t.key for t in trials]
        if len(set(keys)) != len(keys):
            trials = [self.trial(t.params, hashed=True) for t in trials]
        return trials

    def _grid_params(self) -> list[dict[str, Any]]:
        names = [v.name for v in self.space.variants] or [None]
        grid_keys = list(self.space.grid)
        combos = list(itertools.product(*(self.space.grid[k] for k in grid_keys)))
        out = []
        for name in names:
            for combo in combos:
                for repeat in range(self.tune.num_samples):
                    params: dict[str, Any] = {}
                    if name is not None:
                        params[VARIANT] = name
                    params.update(zip(grid_keys, combo))
                    if self.tune.num_samples > 1:
                        params[REPEAT] = repeat
                    out.append(params)
        return out

    def baseline_trial(self, name: str) -> TrialSpec:
        return TrialSpec(key=f"baseline-{name}", params={BASELINE: name}, label=f"{name} (no pretraining)")

    def trial(self, params: dict[str, Any], hashed: bool | None = None) -> TrialSpec:
        """The trial spec of ``params`` (a grid point or an Optuna draw): key and label."""
        params = {k: _plain(v) for k, v in params.items()}
        if params.get(BASELINE):
            return self.baseline_trial(params[BASELINE])
        parts = []
        if params.get(VARIANT) is not None:
            parts.append(str(params[VARIANT]))
        for key in list(self.space.grid) + list(self.space.ranges):
            if key in params:
                parts.append(f"{key.rsplit('.', 1)[-1]}={_fmt(params[key])}")
        if params.get(REPEAT) is not None:
            parts.append(f"r{params[REPEAT]}")
        label = ", ".join(parts) or "default"
        key = _slug(",".join(parts) or "default")
        if hashed if hashed is not None else self.space.continuous:
            digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
            key = f"{key}-{digest}"
        return TrialSpec(key=key, params=params, label=label)

    def to_dict(self) -> dict[str, Any]:
        """The sweep as a plain mapping (YAML-safe), as stored beside the results."""
        return copy.deepcopy(self.raw)


# ---------------------------------------------------------------------------------------------
# Loading


def find_sweep(name_or_path: str | Path) -> Path:
    """A sweep file by path, or by name among the project's ``sweeps/*.yaml``."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    # A name ("table1"), or a path relative to the repository ("sweeps/table1.yaml") used
    # from another folder (e.g. the home folder `ray submit` runs in).
    name = Path(str(name_or_path)).name
    for candidate in (_SWEEPS_DIR / f"{name}.yaml", _SWEEPS_DIR / name):
        if candidate.exists():
            return candidate
    shipped = ", ".join(list_sweeps()) or "none found"
    raise MedaugError(f"sweep config {name_or_path} does not exist; shipped sweeps: {shipped}")


def list_sweeps() -> list[str]:
    """Names of the shipped sweep files."""
    if not _SWEEPS_DIR.is_dir():
        return []
    return sorted(p.stem for p in _SWEEPS_DIR.glob("*.yaml"))


def load_sweep(
    name_or_path: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    output: str | Path | None = None,
    smoke: bool = False,
) -> SweepConfig:
    """Read a sweep file (path, shipped name or mapping), apply ``--set`` overrides, validate.

    Args:
        name_or_path: a YAML path, a shipped sweep name (``table1``) or an already-read mapping.
        overrides: ``KEY=VALUE`` strings (see the module docstring for the key forms).
        output: the sweep's output folder; ``{output}`` in string settings is replaced by it.
        smoke: shrink every trial (:func:`smoke_sweep`) before validating, so settings the
            smoke run replaces (ImageNet weights, dataset paths) need not be given.

    Raises:
        MedaugError: unknown keys, criteria, strategies, baselines, bad ranges or tune
            settings, naming the file and key.
    """
    if isinstance(name_or_path, dict):
        raw, source = copy.deepcopy(name_or_path), "sweep"
    else:
        path = find_sweep(name_or_path)
        raw, source = read_yaml(path), str(path)
    raw = apply_overrides(raw, overrides or [], source)
    if output is not None:
        raw = _substitute(raw, "{output}", str(Path(output).resolve()))
    sweep = parse_sweep(raw, source, validate=not smoke)
    if not smoke:
        return sweep
    # Settings given with --set win over the smoke run's (e.g. --smoke --set pretrain.epochs=3).
    keep = [
        ".".join(keys)
        for keys, _ in (parse_override(o) for o in overrides or [])
        if keys[0] in FIXED_SECTIONS
    ]
    return smoke_sweep(sweep, keep=keep)


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "sweep") -> dict[str, Any]:
    """Apply ``KEY=VALUE`` strings to a raw sweep mapping (returns a new mapping)."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        head = keys[0]
        if head not in SWEEP_KEYS:
            raise MedaugError(
                f"--set {text}: unknown sweep key {head!r}; valid: {', '.join(SWEEP_KEYS)}"
            )
        if head == "space":
            if len(keys) < 2:
                raise MedaugError(f"--set {text}: name the space key, e.g. space.pretrain.lr=...")
            space = raw.setdefault("space", {}) or {}
            raw["space"] = space
            space[".".join(keys[1:])] = value
        elif len(keys) == 1:
            raw[head] = value
        else:
            section = raw.get(head)
            if section is None:
                section = raw[head] = {}
            if not isinstance(section, dict):
                raise MedaugError(f"--set {text}: {head!r} is not a section")
            _deep_set(section, keys[1:], value)
    return raw


def parse_sweep(raw: dict[str, Any], source: str = "sweep", validate: bool = True) -> SweepConfig:
    """Build the :class:`SweepConfig` of a raw sweep mapping and (``validate``) check it."""
    unknown = [k for k in raw if k not in SWEEP_KEYS]
    if unknown:
        raise MedaugError(
            f"{source}: unknown sweep key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(SWEEP_KEYS)}"
        )
    name = raw.get("name") or (Path(source).stem if source != "sweep" else None)
    if not name or not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise MedaugError(f"{source}: 'name' must be a word of letters, digits, '_', '-', '.'")
    base: dict[str, Any] = {}
    for section in FIXED_SECTIONS:
        if raw.get(section) is None:
            continue
        if section != "seed" and not isinstance(raw[section], dict):
            raise MedaugError(f"{source}: section {section!r} must be a mapping")
        base[section] = copy.deepcopy(raw[section])
    space = _parse_space(raw.get("space") or {}, source)
    tune = _parse_tune(raw.get("tune") or {}, source)
    baselines = raw.get("baselines") or []
    if isinstance(baselines, str):
        baselines = [baselines]
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise MedaugError(
            f"{source}: unknown baseline(s) {bad}; valid: {', '.join(BASELINES)}"
        )
    sweep = SweepConfig(
        name=name,
        base=base,
        space=space,
        tune=tune,
        baselines=list(dict.fromkeys(baselines)),
        description=str(raw.get("description") or ""),
        source=source,
        raw=raw,
    )
    if validate:
        validate_sweep(sweep)
    return sweep


def _parse_space(raw: dict[str, Any], source: str) -> Space:
    if not isinstance(raw, dict):
        raise MedaugError(f"{source}: 'space' must be a mapping of config keys to grids or ranges")
    space = Space()
    for key, spec in raw.items():
        where = f"{source}: space key {key!r}"
        if key == VARIANT + "s":
            space.variants = _parse_variants(spec, where)
            continue
        if key in (VARIANT, REPEAT, BASELINE):
            raise MedaugError(f"{where} is reserved")
        if key.split(".")[0] not in FIXED_SECTIONS:
            raise MedaugError(
                f"{where}: must start with one of {', '.join(FIXED_SECTIONS)} (e.g. pretrain.lr)"
            )
        if isinstance(spec, dict):
            kinds = [k for k in spec if k in SPEC_KINDS]
            if len(spec) != 1 or len(kinds) != 1:
                raise MedaugError(
                    f"{where}: expected one of {', '.join(f'{k}: [...]' for k in SPEC_KINDS)}, got {spec!r}"
                )
            kind, values = kinds[0], spec[kinds[0]]
        else:  # a bare list (or scalar) is a grid
            kind, values = "grid", spec
        if kind == "grid":
            values = values if isinstance(values, list) else [values]
            if not values:
                raise MedaugError(f"{where}: the grid is empty")
            values = [_none_word(v) for v in values]
            if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
                raise MedaugError(f"{where}: the grid repeats a value: {values}")
            space.grid[key] = values
        else:
            if (
                not isinstance(values, list)
                or len(values) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            ):
                raise MedaugError(f"{where}: {kind} needs [low, high] numbers, got {values!r}")
            low, high = float(values[0]), float(values[1])
            if not low < high:
                raise MedaugError(f"{where}: {kind} range needs low < high, got [{low}, {high}]")
            if kind == "loguniform" and low <= 0:
                raise MedaugError(f"{where}: loguniform range needs low > 0, got {low}")
            if not _is_float_key(key):
                raise MedaugError(
                    f"{where}: continuous ranges apply to float settings only ({_field_type_name(key)})"
                )
            space.ranges[key] = Range(kind, low, high)
    return space


def _parse_variants(spec: Any, where: str) -> list[Variant]:
    if not isinstance(spec, list) or not spec:
        raise MedaugError(f"{where}: expected a non-empty list of {{name: ..., <key>: value}}")
    out: list[Variant] = []
    for i, item in enumerate(spec):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise MedaugError(f"{where}: variant #{i} must be a mapping with a 'name'")
        name = item["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise MedaugError(f"{where}: variant name {name!r} must use letters, digits, _ . + -")
        body = {k: v for k, v in item.items() if k != "name"}
        dotted = flatten(body)
        for key in dotted:
            if key.split(".")[0] not in FIXED_SECTIONS:
                raise MedaugError(
                    f"{where}: variant {name!r} key {key!r} must start with one of "
                    f"{', '.join(FIXED_SECTIONS)}"
                )
        out.append(Variant(name, {k: _none_word(v) for k, v in dotted.items()}))
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MedaugError(f"{where}: duplicate variant name(s) {dup}")
    return out


def _parse_tune(raw: dict[str, Any], source: str) -> TuneSettings:
    if not isinstance(raw, dict):
        raise MedaugError(f"{source}: 'tune' must be a mapping")
    bad = [k for k in raw if k not in TUNE_KEYS]
    if bad:
        raise MedaugError(f"{source}: unknown tune key(s) {bad}; valid: {', '.join(TUNE_KEYS)}")
    t = TuneSettings()
    t.metric = str(raw.get("metric", t.metric))
    if t.metric in TEST_METRICS:
        raise MedaugError(
            f"{source}: tune.metric {t.metric!r} is the test set's AUC: trials would be chosen "
            f"on the test set; use {t.metric.replace('_auc_mean', '_select_auc_mean')!r} (the "
            "selection set's)"
        )
    if t.metric not in METRICS:
        raise MedaugError(f"{source}: tune.metric {t.metric!r} unknown; valid: {', '.join(METRICS)}")
    t.mode = str(raw.get("mode", t.mode))
    if t.mode not in MODES:
        raise MedaugError(f"{source}: tune.mode must be max or min, got {t.mode!r}")
    t.num_samples = _int(raw, "num_samples", t.num_samples, 1, source)
    t.max_concurrent = _int(raw, "max_concurrent", t.max_concurrent, 0, source)
    t.max_failures = _int(raw, "max_failures", t.max_failures, 0, source)
    t.search_seed = _int(raw, "search_seed", t.search_seed, 0, source)
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict) or any(k not in RESOURCE_KEYS for k in resources):
        raise MedaugError(
            f"{source}: tune.resources must map {', '.join(RESOURCE_KEYS)} to numbers, got {resources!r}"
        )
    for key in RESOURCE_KEYS:
        if key in resources:
            value = resources[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise MedaugError(f"{source}: tune.resources.{key} must be >= 0, got {value!r}")
            setattr(t, key, float(value))
    asha = raw.get("asha")
    if asha not in (None, False):
        if asha is True:
            asha = {}
        if not isinstance(asha, dict) or any(k not in ASHA_KEYS for k in asha):
            raise MedaugError(
                f"{source}: tune.asha must be null or a mapping of {', '.join(ASHA_KEYS)}"
            )
        a = AshaSettings()
        a.metric = str(asha.get("metric", a.metric))
        if a.metric not in ASHA_METRICS:
            raise MedaugError(
                f"{source}: tune.asha.metric {a.metric!r} unknown; valid: {', '.join(ASHA_METRICS)}"
            )
        a.grace_period = _int(asha, "grace_period", a.grace_period, 1, source, "tune.asha.")
        a.reduction_factor = _int(asha, "reduction_factor", a.reduction_factor, 2, source, "tune.asha.")
        t.asha = a
    return t


def _int(raw: dict, key: str, default: int, low: int, source: str, prefix: str = "tune.") -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise MedaugError(f"{source}: {prefix}{key} must be an integer >= {low}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Validation


def validate_sweep(sweep: SweepConfig) -> None:
    """Build every trial's config (grid) or the corners of the space (Optuna); raise early."""
    where = sweep.source or sweep.name
    space = sweep.space
    swept = set(space.keys())
    for key in sorted(swept):
        if _deep_has(sweep.base, key.split(".")):
            raise MedaugError(
                f"{where}: {key} is fixed in the file but also varied by the space; "
                f"set space.{key}=[...] instead"
            )
    for variant in space.variants:
        clash = sorted(set(variant.overrides) & (set(space.grid) | set(space.ranges)))
        if clash:
            raise MedaugError(
                f"{where}: variant {variant.name!r} sets {', '.join(clash)}, which the space also varies"
            )
    if space.continuous:
        for params in _corner_params(sweep):
            _check_trial(sweep, params, where)
        for name in sweep.baselines:
            _check_trial(sweep, {BASELINE: name}, where)
    else:
        for trial in sweep.grid_trials():
            _check_trial(sweep, trial.params, where)
    if sweep.tune.asha is not None:
        cfgs = [sweep.resolve(p) for p in sample_points(sweep)]
        epochs = min(c.pretrain.epochs for c in cfgs)
        if sweep.tune.asha.grace_period > epochs:
            raise MedaugError(
                f"{where}: tune.asha.grace_period ({sweep.tune.asha.grace_period}) exceeds "
                f"pretrain.epochs ({epochs})"
            )
        if any(c.pretrain.knn_every != 1 for c in cfgs):
            raise MedaugError(
                f"{where}: tune.asha stops trials on the kNN AUC of every epoch; "
                "it needs pretrain.knn_every = 1"
            )


def _check_trial(sweep: SweepConfig, params: dict[str, Any], where: str) -> Config:
    try:
        return sweep.resolve(params)
    except MedaugError as err:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) or "the fixed settings"
        raise MedaugError(f"{where}: trial with {shown}: {err}") from None


def sample_points(sweep: SweepConfig) -> list[dict[str, Any]]:
    if sweep.space.continuous:
        return _corner_params(sweep)
    return [t.params for t in sweep.grid_trials() if not t.baseline] or [{}]


def _corner_params(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Each grid value, variant and range end at least once (ranges at both ends)."""
    space = sweep.space
    lows = {k: r.low for k, r in space.ranges.items()}
    points: list[dict[str, Any]] = [dict(lows)]
    for key, r in space.ranges.items():
        points.append({**lows, key: r.high})
    for key, values in space.grid.items():
        for v in values:
            points.append({**lows, key: v})
    for variant in space.variants:
        points.append({**lows, VARIANT: variant.name})
    return points


# ---------------------------------------------------------------------------------------------
# Ray Tune


def tune_param_space(sweep: SweepConfig) -> dict[str, Any]:
    """The ``param_space`` for :class:`ray.tune.Tuner`.

    Grid sweeps: ``{"trial": grid_search([key, ...])}`` over the pre-expanded trials (the trial
    function looks its spec up by key, so folders and run names never depend on Tune's
    naming).  Continuous sweeps: one Tune domain per key for Optuna (``loguniform`` /
    ``uniform`` ranges, ``choice`` for grid keys and variant names).
    """
    from ray import tune

    if not sweep.space.continuous:
        return {"trial": tune.grid_search([t.key for t in sweep.grid_trials()])}
    out: dict[str, Any] = {}
    for key, r in sweep.space.ranges.items():
        out[key] = tune.loguniform(r.low, r.high) if r.kind == "loguniform" else tune.uniform(r.low, r.high)
    for key, values in sweep.space.grid.items():
        out[key] = tune.choice(values)
    if sweep.space.variants:
        out[VARIANT] = tune.choice([v.name for v in sweep.space.variants])
    return out


def trial_for_config(sweep: SweepConfig, config: dict[str, Any]) -> TrialSpec:
    """The :class:`TrialSpec` of a Tune trial's ``config`` (inverse of :func:`tune_param_space`)."""
    if "trial" in config:
        baselines = {sweep.baseline_trial(b).key: sweep.baseline_trial(b) for b in sweep.baselines}
        if config["trial"] in baselines:
            return baselines[config["trial"]]
        by_key = {t.key: t for t in sweep.grid_trials()}
        if config["trial"] not in by_key:
            raise MedaugError(f"sweep {sweep.name}: no trial {config['trial']!r} in the plan")
        return by_key[config["trial"]]
    return sweep.trial({k: v for k, v in config.items()})


# ---------------------------------------------------------------------------------------------
# Smoke runs


SMOKE_SETTINGS: dict[str, Any] = {
    "data": {"image_size": 32, "num_loader_workers": 0},
    "pretrain": {
        "init": "random",
        "weights": None,
        "epochs": 2,  # a best epoch to choose, a checkpoint to rotate
        "max_steps_per_epoch": 16,  # the 64-key queue fills and wraps twice per epoch
        "batch_size": 8,
        "num_workers": 1,
        "use_gpu": False,
        "knn_bank": 64,
        "knn_queries": 32,
        "knn_k": 5,
        "lr_milestones": [],
        "warmup_epochs": 0,  # a sweep's warm-up (the MAE's) would outlast the two epochs
        "max_failures": 0,
    },
    "moco": {"queue_size": 64, "n_hard": 4},
    # A ViT of two 64-wide layers on 8 px patches of the 32 px images (16 patches, 4 seen).
    "mvmae": {"vit": "vit_nano", "patch_size": 8, "mask_ratio": 0.75, "decoder_dim": 64,
              "decoder_depth": 1, "decoder_heads": 2},
    "eval": {
        "n_splits": 2,
        "fraction": 0.25,
        "linear_epochs": 20,
        "linear_batch_size": 8,
        "e2e_epochs": 1,
        "e2e_batch_size": 8,
        "e2e_num_workers": 1,
        "bootstrap": 20,
        "feature_batch_size": 32,
    },
}


def smoke_sweep(
    sweep: SweepConfig, data: dict[str, Any] | None = None, keep: list[str] | None = None
) -> SweepConfig:
    """The same sweep shrunk to seconds per trial; every stage stays real.

    Tiny images, two epochs of 16 steps (the small queue wraps, the kNN monitor picks one of
    two checkpoints), a small kNN bank, 20 probe epochs on two splits, and (``data``) a tiny
    phantom instead of the configured dataset.  The ImageNet
    baseline is kept only when its local weights file is configured.  ``keep``: dotted keys
    whose configured value wins over the smoke setting.
    """
    out = copy.deepcopy(sweep)
    forced = copy.deepcopy(SMOKE_SETTINGS)
    for key in keep or []:
        section, _, name = key.partition(".")
        forced.get(section, {}).pop(name, None)
    if data:
        forced["data"].update(data)
    # One training process per trial; a sweep in Ray Train's local mode stays in it.
    if (sweep.base.get("pretrain") or {}).get("num_workers") == 0:
        forced["pretrain"]["num_workers"] = 0
    weights = (sweep.base.get("pretrain") or {}).get("weights")
    if weights and Path(weights).exists():
        forced["pretrain"].pop("weights")
    elif "imagenet" in out.baselines:
        out.baselines = [b for b in out.baselines if b != "imagenet"]
    out.forced = forced
    if out.tune.asha is not None:
        out.tune.asha.grace_period = 1
    out.tune.num_samples = min(out.tune.num_samples, 2) if out.space.continuous else 1
    # The smoke settings fix keys that the space may vary; those keys keep the smoke value.
    validate_sweep(out)
    return out


# ---------------------------------------------------------------------------------------------
# Helpers


def _deep_set(d: dict[str, Any], keys: list[str], value: Any) -> None:
    node = d
    for k in keys[:-1]:
        nxt = node.get(k)
        if isinstance(nxt, str) and k in _CRITERION_KEYS:
            # A key inside a named criterion (pretrain.criterion.max_partners): the name
            # becomes the preset of a declarative criterion.
            nxt = node[k] = {"preset": nxt}
        elif not isinstance(nxt, dict):
            nxt = node[k] = {}
        node = nxt
    node[keys[-1]] = value


_CRITERION_KEYS = frozenset({"criterion", "size_match", "anchors_with"})


def _deep_has(d: dict[str, Any], keys: list[str]) -> bool:
    node: Any = d
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    return True


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and k != "column_map":
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


def _substitute(obj: Any, token: str, value: str) -> Any:
    if isinstance(obj, str):
        return obj.replace(token, value)
    if isinstance(obj, dict):
        return {k: _substitute(v, token, value) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, token, value) for v in obj]
    return obj


def _none_word(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    return value


def _plain(value: Any) -> Any:
    """numpy scalars (from Optuna draws) -> Python scalars, so keys and JSON are stable."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "-".join(_fmt(v) for v in value)
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", text)[:180]


def _field_type(dotted: str) -> Any:
    node: Any = Config
    tp: Any = None
    for part in dotted.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None
        hints = typing.get_type_hints(node)
        if part not in hints:
            return None
        tp = hints[part]
        node = tp
    return tp


def _field_type_name(dotted: str) -> str:
    tp = _field_type(dotted)
    return "unknown key" if tp is None else f"type {getattr(tp, '__name__', tp)}"


def _is_float_key(dotted: str) -> bool:
    tp = _field_type(dotted)
    if tp is float:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return float in typing.get_args(tp)
    return False


__all__ = [
    "BASELINES",
    "METRICS",
    "AshaSettings",
    "Range",
    "Space",
    "SweepConfig",
    "TrialSpec",
    "TuneSettings",
    "Variant",
    "apply_overrides",
    "find_sweep",
    "list_sweeps",
    "load_sweep",
    "parse_sweep",
    "smoke_sweep",
    "trial_for_config",
    "tune_param_space",
    "validate_sweep",
]
