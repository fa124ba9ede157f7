"""One source of defaults: nested dataclasses, layered with a YAML file and ``key=value`` overrides.

>>> cfg = load_config(None, ["pretrain.epochs=3", "data.image_size=64"])
>>> cfg.pretrain.epochs
3

Unknown keys are an error (listing the valid ones); values are parsed as YAML scalars and
checked against the field's type.  ``config_to_dict`` / ``flatten`` give the resolved config
that is saved beside every result and logged as MLflow params.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medaug.errors import MedaugError


@dataclass
class DataConfig:
    """Where the images and metadata are and how they are prepared."""

    dataset: str = "chexpert"  # chexpert | mimic | nih | padchest | csv (the phantom: chexpert)
    csv: str | None = None  # the dataset's main CSV (CheXpert train.csv, MIMIC metadata, ...)
    root: str | None = None  # image root; default: found next to the CSV
    column_map: dict[str, str] = field(default_factory=dict)  # generic CSV: canonical -> column
    # generic CSV: what raw view / projection values stand for, e.g. {projection: {L: LATERAL}}
    value_map: dict[str, dict[str, str]] = field(default_factory=dict)
    image_size: int = 64  # cache resolution (paper: 320)
    cache_dir: str | None = None  # default: <output>/cache
    skip_bad_images: bool = False
    target: str = "Pleural Effusion"
    uncertain: str = "ignore"  # ignore | zeros | ones
    num_loader_workers: int = 2


@dataclass
class PretrainConfig:
    """What every pretraining method shares: pairs, augmentation, optimiser, schedule,
    runtime, checkpoints and the kNN monitor.  Each method's own settings have their own
    section (``moco``, ``mvmae``), checked only when that method is chosen."""

    method: str = "moco"  # a name from medaug.methods (moco | mvmae) or package.module:Class
    criterion: str | dict[str, Any] = "patient_same_study"  # a name or a grammar mapping
    distinct_only: bool = False
    size_match: str | dict[str, Any] | None = None
    anchors_with: str | dict[str, Any] | None = None  # only anchors with a partner (not x) under it
    crop_scale: float | None = None  # None = no random resized crop; paper: 0.95
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # crop w/h range (MoCo v2's)
    arch: str = "resnet18"
    init: str = "random"  # random | imagenet
    weights: str | None = None  # local ImageNet weights file when init = imagenet
    optimizer: str = "adam"  # adam | adamw | sgd
    sgd_momentum: float = 0.9
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lr_milestones: list[int] = field(default_factory=lambda: [12, 18])
    lr_gamma: float = 0.1
    lr_schedule: str = "step"  # step | cosine | constant
    warmup_epochs: int = 0  # linear warm-up before the schedule (MVMAE reference: 50 of 500)
    grad_clip: float | None = None  # clip the gradient's global norm (MVMAE reference: 1.0)
    batch_size: int = 16  # per worker
    epochs: int = 20
    rotation: float = 10.0
    hflip: float = 0.5
    num_workers: int = 1  # Ray Train workers; 0 = Ray Train local mode (calling process)
    cpus_per_worker: float = 1.0  # CPUs each Ray Train worker reserves
    use_gpu: bool = False
    amp: bool = True  # mixed precision (CUDA only)
    checkpoint_every: int = 1
    keep_checkpoints: int = 2  # epoch checkpoints kept besides the best one
    max_failures: int = 2
    knn_k: int = 20
    knn_every: int = 1  # 0 = no kNN monitor (the last checkpoint is then the best)
    knn_bank: int = 2000  # pool images embedded as the kNN memory bank
    knn_queries: int = 1000  # selection-set images scored by the monitor (never test images)
    max_steps_per_epoch: int | None = None


@dataclass
class MocoConfig:
    """MoCo v2's own settings (section 2 and Appendix B of the MedAug paper); the
    augmentations are the generic ones of ``pretrain``."""

    negatives: str = "default"
    keep_own_image_negatives: bool = False  # true: keys of the query's own image stay negatives
    hard_negatives_by: str = "view"  # the strategies' "laterality": view, projection, sex, age_band, ...
    reweight_t: float = 0.1  # share of negative weight given to same-laterality keys
    n_hard: int = 16  # m for the appended / synthetic strategies
    head_hidden: int = 512
    head_dim: int = 128
    queue_size: int = 4096
    momentum: float = 0.999
    temperature: float = 0.2
    bn_groups: int = 2  # batch-split BN groups for the key encoder on one worker


@dataclass
class MvmaeConfig:
    """One multi-view MAE: encoder, masking, decoder, losses, beta ramp, augmentation, pooling."""

    # Encoder: a named size, each dimension overridable.
    vit: str = "vit_base"  # a name of medaug.mvmae.config.VIT_SIZES
    embed_dim: int | None = None  # None = the size's width
    depth: int | None = None  # None = the size's depth
    num_heads: int | None = None  # None = the size's heads
    patch_size: int = 16
    qk_norm: bool = True
    # Masking: share of each view's patches hidden from the encoder.
    mask_ratio: float = 0.93
    # Decoder (reference: 4 layers, 768 wide, 12 heads).
    decoder_dim: int = 768
    decoder_depth: int = 4
    decoder_heads: int = 12
    norm_pix_loss: bool = False  # true: targets normalised per patch (the reference: false)
    # Alignment of the two views' pooled embeddings.
    align: str = "mse"  # mse (summed over dimensions) | cosine | infonce
    temperature: float = 0.5  # InfoNCE only
    stop_grad: bool = False  # true: the partner's embedding is a fixed target
    beta_max: float = 2.0
    beta_schedule: str = "sigmoid"  # sigmoid | linear | constant
    beta_steepness: float = 10.0  # sigmoid only: the slope k at progress 1/2
    # Per-view augmentation (grey films).
    crop_scale: float = 0.5  # random resized crop, area share in [crop_scale, 1], ratio 1
    hflip: float = 0.5
    brightness: float = 0.4  # factor uniform in [1 - b, 1 + b]
    contrast: float = 0.4  # factor uniform in [1 - c, 1 + c]
    jitter_prob: float = 0.8  # probability that an image is jittered at all
    # Evaluation features of the unmasked encoder.
    pooling: str = "cls"  # cls | mean (of the patch tokens)


@dataclass
class EvalConfig:
    """The nested label-scarce evaluation (section 2.3)."""

    fraction: float = 0.01
    n_splits: int = 5
    split_by: str = "patient"  # patient | image
    split_seed: int = 0
    min_per_class: int = 1
    observations: list[str] = field(default_factory=lambda: ["Pleural Effusion"])
    study_level: str | None = None  # None (image level) | max | mean
    linear: bool = True
    linear_lr: float = 3e-5
    linear_batch_size: int = 16
    linear_epochs: int = 95
    linear_weight_decay: float = 0.0
    e2e: bool = False
    e2e_lr: float = 3e-5
    e2e_batch_size: int = 16
    e2e_epochs: int = 95
    e2e_num_workers: int = 1
    bootstrap: int = 1000
    feature_batch_size: int = 64
    heldout_fraction: float = 0.2  # patient-disjoint test partition when no official one
    select_fraction: float = 0.1  # patient-disjoint selection slice of train (when valid is
    # the test set, as on CheXpert, or absent, as on NIH); it also feeds the kNN monitor
    select_max_images: int = 2000  # cap on that slice (it is scored every epoch)
    splits_csv: str | None = None  # shared label-fraction draws; default <output>/splits.csv
    feature_cache_dir: str | None = None  # default <output>/features
    e2e_use_gpu: bool = False
    e2e_ray: bool = True  # fine-tune each split on Ray Train workers (False: in-process)
    e2e_max_failures: int = 1
    e2e_cpus_per_worker: float = 1.0
    e2e_hflip: float = 0.5  # fine-tuning augmentation (the pretraining recipe's flip/rotation)
    e2e_rotation: float = 10.0
    e2e_crop_scale: float | None = None
    e2e_weight_decay: float = 0.0
    e2e_max_steps_per_epoch: int | None = None
    amp: bool = True  # mixed precision on CUDA (features and fine-tuning)
    roc_plot: bool = True


# The config sections that belong to one method each (the method of the same name).
METHOD_SECTIONS: tuple[str, ...] = ("moco", "mvmae")


@dataclass
class Config:
    """The whole resolved configuration of one job."""

    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    mvmae: MvmaeConfig = field(default_factory=MvmaeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    output: str = "runs/default"


# ---------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int -> float widening allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except MedaugError as err:
                errors.append(str(err))
        raise MedaugError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, item, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise MedaugError(f"{key}: expected a mapping, got {value!r}")
        inner = (typing.get_args(tp) or (str, str))[1]
        if typing.get_origin(inner) is dict:  # a mapping of mappings (data.value_map)
            return {str(k): _coerce(v, inner, f"{key}.{k}") for k, v in value.items()}
        if inner is Any:  # a structure checked where it is used (a pair criterion)
            return {str(k): copy.deepcopy(v) for k, v in value.items()}
        return {str(k): str(v) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise MedaugError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise MedaugError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise MedaugError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise MedaugError(f"{key}: expected a string, got {value!r}")
    return value


def _merge(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    types_ = _field_types(type(obj))
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in types_:
            valid = ", ".join(f"{prefix}{k}" for k in types_)
            raise MedaugError(f"unknown config key {full!r}; valid keys here: {valid}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise MedaugError(f"{full}: expected a section (mapping), got {value!r}")
            _merge(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(value, types_[key], full))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"pretrain.lr=3e-4"`` -> (["pretrain", "lr"], 0.0003); values parse as YAML scalars."""
    if "=" not in text:
        raise MedaugError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise MedaugError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and value.lower() in ("none", "null"):
        value = None
    return key.split("."), value


def nest(keys: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise MedaugError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MedaugError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise MedaugError(f"config file {path} must hold a mapping at top level")
    return data


def build_config(
    base: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> Config:
    """Defaults, then ``base`` (a nested mapping), then ``key=value`` overrides; then checks."""
    cfg = Config()
    if base:
        _merge(cfg, base)
    for text in overrides or []:
        keys, value = parse_override(text)
        _merge(cfg, nest(*_into_mapping(cfg, keys, value)))
    check_config(cfg)
    return cfg


def _into_mapping(cfg: Config, keys: list[str], value: Any) -> tuple[list[str], Any]:
    """An override whose key runs past a setting that holds a mapping
    (``pretrain.criterion.max_partners=2``) becomes that whole setting, with the one entry
    changed; any other override is returned unchanged."""
    node: Any = cfg
    for i, key in enumerate(keys[:-1]):
        if not (dataclasses.is_dataclass(node) and hasattr(node, key)):
            break
        node = getattr(node, key)
        if isinstance(node, dict):
            whole = copy.deepcopy(node)
            entry = whole
            for k in keys[i + 1 : -1]:
                if not isinstance(entry.get(k), dict):
                    entry[k] = {}
                entry = entry[k]
            entry[keys[-1]] = value
            return keys[: i + 1], whole
    return keys, value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Defaults, layered with a YAML file (if given) and ``key=value`` overrides."""
    return build_config(read_yaml(path) if path else None, overrides)


def check_config(cfg: Config) -> None:
    """Cheap consistency checks that should fail before any work starts."""
    from medaug.data.schema import check_observation, check_uncertain_policy

    check_uncertain_policy(cfg.data.uncertain)
    if cfg.data.value_map:  # read by the csv adapter only (a smoke run swaps the dataset)
        from medaug.data.generic import check_value_map

        check_value_map(cfg.data.value_map)
    check_observation(cfg.data.target)
    for obs in cfg.eval.observations:
        check_observation(obs)
    if cfg.data.image_size < 16:
        raise MedaugError(f"data.image_size must be at least 16, got {cfg.data.image_size}")
    p = cfg.pretrain
    if p.crop_scale is not None and not (0.0 < p.crop_scale <= 1.0):
        raise MedaugError(f"pretrain.crop_scale must lie in (0, 1] or be none, got {p.crop_scale}")
    if p.epochs < 1 or p.batch_size < 1:
        raise MedaugError("pretrain.epochs and batch_size must be positive")
    if not 0 <= p.warmup_epochs < p.epochs:
        raise MedaugError(
            f"pretrain.warmup_epochs must lie in [0, pretrain.epochs), got {p.warmup_epochs} of "
            f"{p.epochs}"
        )
    if p.num_workers < 0:
        raise MedaugError(
            f"pretrain.num_workers must be at least 0 (0: Ray Train's local mode, in the "
            f"calling process), got {p.num_workers}"
        )
    if len(p.crop_ratio) != 2 or not all(0.0 < r < float("inf") for r in p.crop_ratio) or (
        p.crop_ratio[0] > p.crop_ratio[1]
    ):
        raise MedaugError(
            "pretrain.crop_ratio must be two positive numbers [low, high] with low <= high "
            f"(the crop's width / height range; MoCo v2: [0.75, 1.3333]), got {p.crop_ratio}"
        )
    if p.init not in ("random", "imagenet"):
        raise MedaugError(f"pretrain.init must be 'random' or 'imagenet', got {p.init!r}")
    if p.init == "imagenet":
        if not p.weights:
            raise MedaugError("pretrain.init = imagenet needs pretrain.weights = PATH (a local file)")
        if not Path(p.weights).exists():
            raise MedaugError(
                f"pretrain.weights file {p.weights} does not exist (weights are never downloaded)"
            )
    e = cfg.eval
    if not 0.0 < e.fraction <= 1.0:
        raise MedaugError(f"eval.fraction must lie in (0, 1], got {e.fraction}")
    if e.split_by not in ("patient", "image"):
        raise MedaugError(f"eval.split_by must be 'patient' or 'image', got {e.split_by!r}")
    if e.study_level not in (None, "max", "mean"):
        raise MedaugError(f"eval.study_level must be none, max or mean, got {e.study_level!r}")
    if not e.observations:
        raise MedaugError("eval.observations is empty; name at least one observation")
    if e.n_splits < 1:
        raise MedaugError(f"eval.n_splits must be at least 1, got {e.n_splits}")
    for key in ("linear_epochs", "linear_batch_size", "e2e_epochs", "e2e_batch_size",
                "e2e_num_workers", "feature_batch_size"):
        if getattr(e, key) < 1:
            raise MedaugError(f"eval.{key} must be at least 1, got {getattr(e, key)}")
    for key in ("heldout_fraction", "select_fraction"):
        if not 0.0 < getattr(e, key) < 1.0:
            raise MedaugError(f"eval.{key} must lie in (0, 1), got {getattr(e, key)}")
    if e.bootstrap < 0:
        raise MedaugError(f"eval.bootstrap must be >= 0, got {e.bootstrap}")
    if not (e.linear or e.e2e):
        raise MedaugError("both eval.linear and eval.e2e are false: nothing to evaluate")
    # Registries are checked where they live (lazy imports keep this module light).
    from medaug.pairs.criteria import check_criterion_setting

    for key in ("criterion", "size_match", "anchors_with"):
        if getattr(p, key) is not None:
            check_criterion_setting(getattr(p, key), f"pretrain.{key}")
    # The chosen method's own rules, and only its (they import the method, hence torch).
    from medaug.methods import get_method

    method = get_method(p.method)
    for section in METHOD_SECTIONS:
        if section == method.config_section:
            continue
        given = getattr(cfg, section)
        default = type(given)()
        changed = [f"{section}.{f.name}" for f in dataclasses.fields(given)
                   if getattr(given, f.name) != getattr(default, f.name)]
        if changed:
            raise MedaugError(
                f"{', '.join(changed)} set, but pretrain.method is {p.method!r}: the "
                f"{section} section belongs to method {section!r} (set pretrain.method={section} "
                "or drop those keys)"
            )
    method.check(cfg)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists, None and value mappings (column_map,
    value_map) kept."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in _VALUE_MAPPINGS:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


_VALUE_MAPPINGS = frozenset({"column_map", "value_map"})


def write_config(cfg: Config, path: str | Path) -> Path:
    """Save the resolved config as YAML (atomically)."""
    from medaug.files import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
