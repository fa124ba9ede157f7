"""The phantom: a synthetic chest X-ray dataset in CheXpert's layout, the bundled default data.

The generative model carries the structure MedAug relies on:

- every patient has their own anatomy (thorax size and shape, heart size and position, rib
  spacing, diaphragm height, body habitus, exposure and contrast, a slight rotation) that
  all of their images share;
- a patient's studies follow each other in time; findings evolve between studies.  Pleural
  effusion above all: a latent state (none / small / moderate / large) follows a Markov
  chain over studies whose transitions depend on a per-patient propensity, on the right,
  left or both sides.  Frontal films show it as a blunted costophrenic angle and a dense
  basal opacity under a meniscus that rises with severity (a veil on supine AP films);
  lateral films show the posterior sulcus filling;
- all images of a study share one latent state and one set of labels (CheXpert labels come
  from the study's report): most studies have a frontal view (PA or AP), many also a
  lateral, a few two frontals, a few a lateral only;
- studies are dated (the ``Study Date`` column, the phantom's one addition to CheXpert's
  columns; see :func:`study_dates`): a patient re-imaged while the effusion state holds
  was seen days later, one whose effusion changed months later, so studies close in time
  share their labels more often than distant ones;
- distractors with their labels: cardiomegaly (correlated with effusion, as in heart
  failure), mediastinal widening, perihilar edema, consolidation, nodules, plate
  atelectasis, pneumothorax, pleural thickening, rib fractures, support devices (tubes,
  lines and pacemakers drawn as bright curves), breast shadows;
- training labels are noisy the way CheXpert's are: uncertain (-1) mostly near a
  finding's decision boundary, blanks for unmentioned negatives, a little label noise;
  the valid and test splits carry clean 0/1 labels (CheXpert's radiologist consensus).

Everything is drawn with vectorised numpy on a coordinate grid; each patient has its own
seeded generator (and a second one for the dates, so that dating the studies changed no
other draw), so the output is byte-identical for a seed whatever the number of worker
processes.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import numbers
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medaug.data.chexpert import STUDY_DATE_COLUMN
from medaug.data.schema import OBSERVATIONS
from medaug.data.workers import pool_context, usable_cpus
from medaug.errors import MedaugError

# CheXpert's CSV columns, in order; the phantom's CSVs add the study's date after them.
CSV_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + OBSERVATIONS
WRITTEN_COLUMNS: tuple[str, ...] = CSV_COLUMNS + (STUDY_DATE_COLUMN,)
SPLITS: tuple[str, ...] = ("train", "valid", "test")
MANIFEST = "phantom.json"
JPEG_QUALITY = 90
# Bumped whenever the generative model changes, so a stored phantom is never mistaken for
# the output of different code.
VERSION = 1
# Bumped whenever the files written change while the draws stay the same (2: study dates),
# so a stored phantom of an older layout is regenerated rather than reused.
LAYOUT = 2

# Effusion: latent states none / small / moderate / large, their severity ranges, and the
# Markov chain over studies.  A patient's propensity rho mixes a "healthy" and a "sick"
# chain: P = (1 - rho) P_healthy + rho P_sick.
EFFUSION_SEVERITY = ((0.0, 0.06), (0.10, 0.35), (0.35, 0.65), (0.65, 1.0))
EFFUSION_THRESHOLD = 0.2  # a study is effusion-positive when its severity exceeds this
_START_HEALTHY = np.array([0.86, 0.08, 0.04, 0.02])
_START_SICK = np.array([0.25, 0.25, 0.30, 0.20])
_CHAIN_HEALTHY = np.array(
    [
        [0.90, 0.07, 0.02, 0.01],
        [0.45, 0.35, 0.15, 0.05],
        [0.25, 0.30, 0.35, 0.10],
        [0.15, 0.25, 0.35, 0.25],
    ]
)
_CHAIN_SICK = np.array(
    [
        [0.50, 0.25, 0.17, 0.08],
        [0.15, 0.35, 0.35, 0.15],
        [0.08, 0.20, 0.42, 0.30],
        [0.05, 0.10, 0.35, 0.50],
    ]
)
# Patients draw their propensity from Beta(a, b); its mean anchors the decoupled chain.
_PROPENSITY_BETA = (1.2, 2.2)
_MEAN_PROPENSITY = _PROPENSITY_BETA[0] / sum(_PROPENSITY_BETA)
CARDIOMEGALY_THRESHOLD = 0.52  # cardiothoracic ratio
EDEMA_THRESHOLD = 0.5
MEDIASTINUM_THRESHOLD = 1.18  # mediastinal width relative to normal

# Study dates (days since 1970-01-01): CheXpert's films span October 2002 to July 2017.  The
# gap after a study is exponential, short when the effusion state holds and long when it
# changes, on top of the years the model lets pass between some studies.
EPOCH = datetime.date(1970, 1, 1)
FIRST_DAY = (datetime.date(2002, 10, 1) - EPOCH).days
LAST_DAY = (datetime.date(2017, 7, 31) - EPOCH).days
GAP_DAYS_KEPT = 4.0  # mean gap when the effusion state is unchanged (the same admission)
GAP_DAYS_CHANGED = 120.0  # mean gap when it changed
_DATE_STREAM = 0xDA7E  # keeps the date generator's seed apart from the patient generator's


@dataclass(frozen=True)
class PhantomStyle:
    """The knobs of the generative model: how strongly what varies between patients, between
    studies and between films.  The defaults are the original phantom (byte for byte).

    Attributes:
        anatomy_spread: scale of the between-patient spread of anatomy, habitus and exposure
            (1: the original spread; smaller values make patients look more alike).
        exposure_jitter: per-film relative spread of the tube output and of the film's gamma
            around the patient's own (0.03: films of a patient look alike).
        noise, grain: standard deviation of the pixel-scale mottle and of the coarser grain.
        noise_spread: per-film spread of the noise: its level is scaled by exp(U(-s, s)) and
            its grain is 1, 2 or 3 pixels (0: the same noise texture on every film).
        pose_jitter: scale of the per-film positioning jitter (1: rotation 0.8 degrees, scale
            1.5%, shift 3% of the film).
        marker: share of films carrying a radiopaque side marker (a bright "L"-shaped block)
            at a random place along the top edge.
        views: shares of studies with one frontal film, a frontal and a lateral, two frontals
            (a third of those with a lateral too) and a lateral only.
        effusion_mixing: share of the effusion chain's transitions replaced by a fresh draw from
            the patient's starting distribution (0: the original persistence; 1: studies of a
            patient independent).
        effusion_coupling: how much the patient's propensity (which also enlarges the heart and
            brings edema and devices) sets their effusion chain (1: the original; 0: every
            patient follows the average chain, so nothing that identifies a patient predicts
            effusion).
        study_stop: chance that a patient has no further study after each one (the number of
            studies is geometric, mean 1 / study_stop, at most 12; CheXpert has about 2.9).
        split_shares: shares of the patients in train, valid and test (CheXpert-like 80/10/10;
            a larger test share gives tighter test AUCs at no cost to pretraining).
    """

    anatomy_spread: float = 1.0
    exposure_jitter: float = 0.03
    noise: float = 0.016
    grain: float = 0.01
    noise_spread: float = 0.0
    pose_jitter: float = 1.0
    marker: float = 0.0
    views: tuple[float, float, float, float] = (0.58, 0.30, 0.07, 0.05)
    effusion_mixing: float = 0.0
    effusion_coupling: float = 1.0
    study_stop: float = 0.36
    split_shares: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self) -> None:
        checks = (
            ("anatomy_spread", self.anatomy_spread, 0.0, 2.0),
            ("exposure_jitter", self.exposure_jitter, 0.0, 0.5),
            ("noise", self.noise, 0.0, 0.3),
            ("grain", self.grain, 0.0, 0.3),
            ("noise_spread", self.noise_spread, 0.0, 2.0),
            ("pose_jitter", self.pose_jitter, 0.0, 5.0),
            ("marker", self.marker, 0.0, 1.0),
            ("effusion_mixing", self.effusion_mixing, 0.0, 1.0),
            ("effusion_coupling", self.effusion_coupling, 0.0, 1.0),
            ("study_stop", self.study_stop, 0.05, 1.0),
        )
        for name, value, low, high in checks:
            if not _is_number(value) or not low <= value <= high:
                raise MedaugError(
                    f"phantom style {name} must be a number in [{low}, {high}], got {value!r}"
                )
            object.__setattr__(self, name, float(value))
        views = _shares(self.views)
        if len(views) != 4 or min(views) < 0 or abs(sum(views) - 1.0) > 1e-6:
            raise MedaugError(
                "phantom style views must be four shares (one frontal, frontal + lateral, two "
                f"frontals, lateral only) summing to 1, got {self.views}"
            )
        object.__setattr__(self, "views", views)
        shares = _shares(self.split_shares)
        if len(shares) != 3 or min(shares) <= 0 or abs(sum(shares) - 1.0) > 1e-6:
            raise MedaugError(
                "phantom style split_shares must be three positive shares (train, valid, test) "
                f"summing to 1, got {self.split_shares}"
            )
        object.__setattr__(self, "split_shares", shares)

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}


def _is_number(value: object) -> bool:
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return real and math.isfinite(value)


def _shares(values: object) -> tuple[float, ...]:
    """A sequence of numbers as floats; anything else as () (which the callers refuse)."""
    if not isinstance(values, (list, tuple)) or not all(_is_number(v) for v in values):
        return ()
    return tuple(float(v) for v in values)


DEFAULT_STYLE = PhantomStyle()
# Named styles (``medaug data phantom --style NAME``).
STYLES: dict[str, PhantomStyle] = {
    "original": DEFAULT_STYLE,
    # The positive control's phantom (``medaug demo --control``): strong per-film nuisance
    # (exposure, noise level, positioning, side markers) that pairs of one film share and pairs
    # of two films do not, more studies with two films (mostly two frontals), about six studies
    # per patient whose effusion changes more often between studies than in the original.
    "positive_control": PhantomStyle(
        anatomy_spread=1.0,
        exposure_jitter=0.15,
        noise_spread=0.5,
        pose_jitter=2.0,
        marker=0.5,
        views=(0.3, 0.2, 0.45, 0.05),
        effusion_mixing=0.7,
        study_stop=0.16,
    ),
}


def resolve_style(style: PhantomStyle | str | dict | None) -> PhantomStyle:
    """A :class:`PhantomStyle` from itself, a name in ``STYLES``, a mapping of its fields, or
    None (the original phantom)."""
    if style is None:
        return DEFAULT_STYLE
    if isinstance(style, PhantomStyle):
        return style
    if isinstance(style, str):
        if style not in STYLES:
            raise MedaugError(
                f"unknown phantom style {style!r}; valid: {', '.join(STYLES)}, or a mapping of "
                "its fields"
            )
        return STYLES[style]
    if not isinstance(style, dict):
        raise MedaugError(
            f"a phantom style is a name ({', '.join(STYLES)}) or a mapping of its fields, "
            f"got {style!r}"
        )
    names = {f.name for f in dataclasses.fields(PhantomStyle)}
    unknown = sorted(str(k) for k in set(style) - names)
    if unknown:
        raise MedaugError(
            f"unknown phantom style field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
        )
    return PhantomStyle(**{k: tuple(v) if isinstance(v, list) else v for k, v in style.items()})


# ---------------------------------------------------------------------------------------------
# Latent state: patients and studies


@dataclass
class Patient:
    """Per-patient anatomy and dispositions, shared by all of the patient's images."""

    sex: str
    age: float
    propensity: float  # 0..1: how prone to effusion, edema, devices
    width: float  # thorax width factor
    height: float  # thorax height factor
    shift: float  # horizontal offset of the thorax
    rotation: float  # degrees
    scale: float
    ctr: float  # baseline cardiothoracic ratio
    heart_dx: float  # heart centre offset to the patient's left
    heart_tilt: float
    mediastinum: float  # mediastinal width factor
    rib_spacing: float
    rib_phase: float
    diaphragm: float  # dome apex height of the right hemidiaphragm
    diaphragm_asym: float  # the left one sits this much lower
    soft: float  # soft-tissue thickness (habitus)
    air: float  # lung lucency
    gain: float
    gamma: float
    effusion_side: str  # right | left | both
    texture: np.ndarray  # 2 x T x T low-resolution lung-marking fields
    nodules: list[tuple[float, float, float, float]] = field(default_factory=list)  # side, x, y, r
    pleural_other: bool = False
    fracture: tuple[float, float] | None = None  # (side, rib index) once present
    fracture_study: int = 99
    pacemaker: int = 99  # first study with a pacemaker


@dataclass
class Study:
    """The latent state of one study; all its images are drawn from it."""

    index: int
    age: float
    effusion: tuple[float, float]  # severity right, left
    effusion_state: int
    ctr: float
    edema: float
    mediastinum: float
    consolidation: tuple[float, float, float, float] | None  # side, x, y, radius
    atelectasis: tuple[float, float, float] | None  # side, y, tilt
    pneumothorax: tuple[float, float] | None  # side, depth
    devices: tuple[str, ...]
    pneumonia: bool
    views: tuple[str, ...]  # "PA" | "AP" | "LATERAL", in file order


def _sample_patient(rng: np.random.Generator, style: PhantomStyle = DEFAULT_STYLE) -> Patient:
    k = style.anatomy_spread

    def normal(mean: float, sd: float) -> float:
        return float(rng.normal(mean, sd * k))

    def uniform(low: float, high: float) -> float:
        v = float(rng.uniform(low, high))  # one draw whatever k, so k = 1 is the original
        return v if k == 1.0 else (low + high) / 2 + (v - (low + high) / 2) * k

    sex = "Male" if rng.random() < 0.56 else "Female"
    male = sex == "Male"
    age = float(np.clip(rng.normal(61.0, 17.0), 18.0, 90.0))
    rho = float(rng.beta(*_PROPENSITY_BETA))
    nodules = []
    if rng.random() < 0.07:
        for _ in range(1 + int(rng.random() < 0.3)):
            nodules.append(
                (float(rng.choice([-1.0, 1.0])), float(rng.uniform(0.2, 0.55)),
                 float(rng.uniform(-0.45, 0.2)), float(rng.uniform(0.025, 0.06)))
            )
    fracture = None
    if rng.random() < 0.04:
        fracture = (float(rng.choice([-1.0, 1.0])), float(rng.integers(2, 7)))
    return Patient(
        sex=sex,
        age=age,
        propensity=rho,
        width=normal(1.03 if male else 0.97, 0.04),
        height=normal(1.0, 0.04),
        shift=normal(0.0, 0.02),
        rotation=normal(0.0, 2.0),
        scale=normal(1.0, 0.03),
        ctr=float(np.clip(normal(0.445, 0.035) + 0.05 * rho + 0.0008 * (age - 60), 0.36, 0.62)),
        heart_dx=normal(0.06, 0.02),
        heart_tilt=normal(0.35, 0.08),
        mediastinum=float(np.clip(normal(1.0, 0.09), 0.75, 1.5)),
        rib_spacing=uniform(0.125, 0.16),
        rib_phase=uniform(0.0, 1.0),
        diaphragm=normal(0.38, 0.04),
        diaphragm_asym=normal(0.04, 0.015),
        soft=uniform(0.85, 1.2),
        air=uniform(0.85, 1.1),
        gain=uniform(0.9, 1.1),
        gamma=uniform(0.8, 1.25),
        effusion_side=str(rng.choice(["right", "left", "both"], p=[0.35, 0.25, 0.40])),
        texture=rng.standard_normal((2, 14, 14)).astype(np.float32),
        nodules=nodules,
        pleural_other=bool(rng.random() < 0.02),
        fracture=fracture,
        fracture_study=int(rng.integers(0, 4)) if fracture else 99,
        pacemaker=int(rng.integers(0, 4)) if rng.random() < 0.05 + 0.06 * rho else 99,
    )


def _sample_views(
    rng: np.random.Generator, ap_prob: float, shares: tuple[float, ...] = DEFAULT_STYLE.views
) -> tuple[str, ...]:
    frontal = "AP" if rng.random() < ap_prob else "PA"
    u = rng.random()
    one, with_lateral, two = np.cumsum(shares[:3])
    if u < one:
        return (frontal,)
    if u < with_lateral:
        return (frontal, "LATERAL")
    if u < two:
        return (frontal, frontal) if rng.random() < 0.7 else (frontal, frontal, "LATERAL")
    return ("LATERAL",)


def _sample_studies(
    rng: np.random.Generator, p: Patient, style: PhantomStyle = DEFAULT_STYLE
) -> list[Study]:
    n = int(min(rng.geometric(style.study_stop), 12))  # CheXpert: about 2.9 studies per patient
    rho = p.propensity
    # The effusion chain's own propensity: the patient's, pulled towards the population mean.
    r = style.effusion_coupling * rho + (1 - style.effusion_coupling) * _MEAN_PROPENSITY
    chain = (1 - r) * _CHAIN_HEALTHY + r * _CHAIN_SICK
    start = (1 - r) * _START_HEALTHY + r * _START_SICK
    if style.effusion_mixing:
        chain = (1 - style.effusion_mixing) * chain + style.effusion_mixing * start
    state = int(rng.choice(4, p=start))
    devices: tuple[str, ...] = ()
    age = p.age
    studies = []
    for k in range(n):
        if k:
            state = int(rng.choice(4, p=chain[state]))
            # Most follow-ups happen within the same admission; some years later.
            if rng.random() < 0.3:
                age += float(rng.uniform(0.5, 3.0))
        lo, hi = EFFUSION_SEVERITY[state]
        severity = float(rng.uniform(lo, hi))
        side = p.effusion_side
        if side != "both" and state >= 2 and rng.random() < 0.25:
            side = "both"
        if side == "both":
            other = severity * float(rng.uniform(0.5, 1.0))
            pair = (severity, other) if rng.random() < 0.5 else (other, severity)
        elif side == "right":
            pair = (severity, float(rng.uniform(0.0, 0.05)))
        else:
            pair = (float(rng.uniform(0.0, 0.05)), severity)
        # Heart failure links effusion, a larger heart and edema.
        ctr = float(np.clip(p.ctr + 0.02 * (state >= 2) + rng.normal(0.0, 0.01), 0.34, 0.68))
        edema = float(np.clip(
            0.12 * state + 2.5 * (ctr - 0.45) + 0.25 * rho + rng.normal(0.0, 0.15), 0.0, 1.0
        ))
        # Support devices switch on and off between studies (an on/off Markov chain).
        on = rng.random() < ((0.15 + 0.45 * rho) if not devices else 0.7)
        if on and not devices:
            pool = ["ett", "ngt", "cvc"]
            picked = [d for d in pool if rng.random() < 0.5] or [str(rng.choice(pool))]
            devices = tuple(picked)
        elif not on:
            devices = ()
        study_devices = devices + (("pacemaker",) if k >= p.pacemaker else ())
        consolidation = None
        if rng.random() < 0.07 + 0.08 * rho:
            consolidation = (
                float(rng.choice([-1.0, 1.0])), float(rng.uniform(0.25, 0.6)),
                float(rng.uniform(-0.4, 0.25)), float(rng.uniform(0.08, 0.16)),
            )
        atelectasis = None
        if rng.random() < 0.10 + 0.12 * min(state, 2):
            s = {"right": -1.0, "left": 1.0}.get(side, float(rng.choice([-1.0, 1.0])))
            atelectasis = (s, float(rng.uniform(0.05, 0.3)), float(rng.normal(0.0, 0.12)))
        pneumothorax = None
        if rng.random() < 0.015 + 0.04 * bool(study_devices):
            pneumothorax = (float(rng.choice([-1.0, 1.0])), float(rng.uniform(0.08, 0.22)))
        sick = state >= 2 or bool(study_devices) or edema > EDEMA_THRESHOLD
        studies.append(
            Study(
                index=k,
                age=age,
                effusion=pair,
                effusion_state=state,
                ctr=ctr,
                edema=edema,
                mediastinum=float(p.mediastinum + rng.normal(0.0, 0.02)),
                consolidation=consolidation,
                atelectasis=atelectasis,
                pneumothorax=pneumothorax,
                devices=study_devices,
                pneumonia=consolidation is not None and rng.random() < 0.6,
                views=_sample_views(rng, 0.5 + 0.35 * sick, style.views),
            )
        )
    return studies


def study_dates(seed: int, index: int, studies: list[Study]) -> list[int]:
    """The dates of a patient's studies, in days since 1970-01-01 (strictly increasing).

    The gap between consecutive studies k-1 and k is the years the model let pass between
    them (``Study.age``; most follow-ups have none) plus an exponential number of days with
    mean ``GAP_DAYS_KEPT`` (4) when the effusion state is the same in both (a patient
    re-imaged during one admission) or ``GAP_DAYS_CHANGED`` (120) when it changed, rounded up
    to whole days (at least 1).  The patient's sequence starts at a uniform day such that it
    fits between October 2002 and July 2017 (CheXpert's span), or at its start when longer.
    So pairs of a patient's studies at most 30 days apart share their effusion label more
    often than pairs further apart (about 0.89 against 0.60 on the latent state).

    The draws come from a generator of their own, seeded by (seed, index), so adding dates
    changed none of the images or labels.

    Args:
        seed: the dataset seed.
        index: the patient's index.
        studies: the patient's studies, in order.

    Returns:
        One whole day per study.
    """
    rng = np.random.default_rng(np.random.SeedSequence([VERSION, seed, index, _DATE_STREAM]))
    gaps = []
    for before, after in zip(studies, studies[1:]):
        kept = after.effusion_state == before.effusion_state
        mean = GAP_DAYS_KEPT if kept else GAP_DAYS_CHANGED
        days = 365.25 * (after.age - before.age) + float(rng.exponential(mean))
        gaps.append(max(1, math.ceil(days)))
    span = sum(gaps)
    start = FIRST_DAY + int(rng.integers(0, max(0, LAST_DAY - FIRST_DAY - span) + 1))
    return [start + int(d) for d in np.cumsum([0] + gaps)]


def iso_date(day: int) -> str:
    """Days since 1970-01-01 -> "YYYY-MM-DD"."""
    return (EPOCH + datetime.timedelta(days=int(day))).isoformat()


# ---------------------------------------------------------------------------------------------
# Labels


def _findings(p: Patient, s: Study) -> dict[str, tuple[float, float, float, float]]:
    """Per observation: (score, threshold, width of the uncertain band around the threshold,
    largest chance of an uncertain label, reached at the threshold); binary findings have no
    band (their hedging rate is in ``_HEDGE``)."""
    binary = 0.5, 0.0, 0.0
    return {
        "Enlarged Cardiomediastinum": (s.mediastinum, MEDIASTINUM_THRESHOLD, 0.04, 0.4),
        "Cardiomegaly": (s.ctr, CARDIOMEGALY_THRESHOLD, 0.012, 0.35),
        "Lung Lesion": (float(bool(p.nodules)), *binary),
        "Edema": (s.edema, EDEMA_THRESHOLD, 0.08, 0.5),
        "Consolidation": (float(s.consolidation is not None), *binary),
        "Pneumonia": (float(s.pneumonia), *binary),
        "Atelectasis": (float(s.atelectasis is not None), *binary),
        "Pneumothorax": (float(s.pneumothorax is not None), *binary),
        "Pleural Effusion": (max(s.effusion), EFFUSION_THRESHOLD, 0.06, 0.55),
        "Pleural Other": (float(p.pleural_other), *binary),
        "Fracture": (float(p.fracture is not None and s.index >= p.fracture_study), *binary),
        "Support Devices": (float(bool(s.devices)), *binary),
    }


# How often a report mentions a negative finding explicitly (0.0 rather than blank), and how
# often it hedges on a present binary finding (-1).
_NEGATIVE_MENTION = {
    "Enlarged Cardiomediastinum": 0.08, "Cardiomegaly": 0.12, "Lung Lesion": 0.03,
    "Edema": 0.25, "Consolidation": 0.15, "Pneumonia": 0.08, "Atelectasis": 0.05,
    "Pneumothorax": 0.35, "Pleural Effusion": 0.45, "Pleural Other": 0.02, "Fracture": 0.04,
    "Support Devices": 0.05, "Lung Opacity": 0.05,
}
_HEDGE = {
    "Lung Lesion": 0.15, "Consolidation": 0.25, "Pneumonia": 0.7, "Atelectasis": 0.3,
    "Pneumothorax": 0.1, "Pleural Other": 0.3, "Fracture": 0.2, "Support Devices": 0.0,
}


def study_labels(p: Patient, s: Study, rng: np.random.Generator, clean: bool) -> list[float]:
    """The 14 labels of a study in CheXpert order (NaN = blank).

    ``clean`` gives the 0/1 ground truth of the latent state (the valid and test splits);
    otherwise labels are "extracted from a report": uncertain near the decision boundary
    (and for hedged binary findings), blank for most negatives, a little label noise.
    """
    positive: dict[str, bool] = {}
    labels: dict[str, float] = {}
    for name, (score, threshold, width, peak) in _findings(p, s).items():
        pos = score > threshold
        positive[name] = pos
        if clean:
            labels[name] = float(pos)
            continue
        if width > 0:
            hedge = peak * math.exp(-(((score - threshold) / width) ** 2))
        else:
            hedge = _HEDGE[name] if pos else 0.0
        if rng.random() < hedge:
            labels[name] = -1.0
        elif pos:
            labels[name] = math.nan if rng.random() < 0.02 else 1.0
        else:
            labels[name] = 1.0 if rng.random() < 0.02 else (
                0.0 if rng.random() < _NEGATIVE_MENTION[name] else math.nan
            )
    opacity = ("Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis")
    any_opacity = any(positive[n] for n in opacity)
    if clean:
        labels["Lung Opacity"] = float(any_opacity)
    elif any(labels[n] == 1.0 for n in opacity):
        labels["Lung Opacity"] = 1.0
    elif any(labels[n] == -1.0 for n in opacity):
        labels["Lung Opacity"] = -1.0
    else:
        labels["Lung Opacity"] = 0.0 if rng.random() < _NEGATIVE_MENTION["Lung Opacity"] else math.nan
    # No Finding: positive only when no pathology is positive or uncertain (CheXpert's rule).
    pathologies = [n for n in OBSERVATIONS if n not in ("No Finding", "Support Devices")]
    if clean:
        labels["No Finding"] = float(not any(labels[n] == 1.0 for n in pathologies))
    else:
        clear = not any(labels[n] in (1.0, -1.0) for n in pathologies)
        labels["No Finding"] = 1.0 if clear else math.nan
    return [labels[n] for n in OBSERVATIONS]


# ---------------------------------------------------------------------------------------------
# Drawing primitives (coordinates: u right, v down, the central square spans [-1, 1]^2)


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """Smooth indicator of d > 0 with a transition of width ~edge."""
    return 0.5 + 0.5 * np.tanh(d / edge)


def _window(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float):
    """Boolean mask of the grid points within a box; None when the box covers most of it.

    Shapes are evaluated only inside their bounding box: most are small, and the distance
    computations are the expensive part of drawing.
    """
    sel = (np.abs(x - cx) < rx) & (np.abs(y - cy) < ry)
    return None if sel.mean() > 0.4 else sel


def _in_window(fn, x, y, sel):
    """``fn(x, y)`` on the whole grid, or only inside ``sel`` (zero elsewhere)."""
    if sel is None:
        return fn(x, y)
    out = np.zeros_like(x)
    if sel.any():
        out[sel] = fn(x[sel], y[sel])
    return out


def _power(v: np.ndarray, power: int) -> np.ndarray:
    """|v| ** power for power 2, 3 or 4 by multiplication (a general pow is far slower)."""
    v2 = v * v
    if power == 2:
        return v2
    return v2 * np.abs(v) if power == 3 else v2 * v2


def _ellipse(x, y, cx, cy, a, b, edge, power: int = 2, angle: float = 0.0) -> np.ndarray:
    """Smooth mask of a (super)ellipse centred at (cx, cy) with half-axes a, b.

    ``power`` 2 is an ellipse; 3 and 4 are boxier.  The edge is placed by a first-order
    distance, (1 - R) / power * min(a, b) with R = |dx/a|^p + |dy/b|^p, exact at the outline.
    """
    c, s = math.cos(angle), math.sin(angle)

    def draw(x, y):
        dx, dy = x - cx, y - cy
        if angle:
            dx, dy = c * dx + s * dy, -s * dx + c * dy
        ratio = _power(dx / a, power) + _power(dy / b, power)
        return _soft((1.0 - ratio) * (min(a, b) / power), edge)

    reach = max(a, b) * (1.0 + 4.0 * edge / min(a, b)) * (1.42 if power > 2 else 1.0)
    return _in_window(draw, x, y, _window(x, y, cx, cy, reach, reach))


def _polyline_distance(x: np.ndarray, y: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from M points (x, y) to the polyline through K points (K x 2)."""
    p0, d = points[:-1], np.diff(points, axis=0)  # (K-1) x 2 each
    length2 = np.maximum((d * d).sum(1), 1e-12)  # K-1
    px, py = x[:, None] - p0[:, 0], y[:, None] - p0[:, 1]  # M x (K-1)
    t = np.clip((px * d[:, 0] + py * d[:, 1]) / length2, 0.0, 1.0)
    qx, qy = px - t * d[:, 0], py - t * d[:, 1]
    return np.sqrt((qx * qx + qy * qy).min(1))  # M


def _bezier(*ctrl: tuple[float, float], n: int = 16) -> np.ndarray:
    """n points on a quadratic or cubic Bezier curve through the control points."""
    c = np.asarray(ctrl, dtype=np.float32)
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    if len(c) == 3:
        return (1 - t) ** 2 * c[0] + 2 * (1 - t) * t * c[1] + t**2 * c[2]
    return (1 - t) ** 3 * c[0] + 3 * (1 - t) ** 2 * t * c[1] + 3 * (1 - t) * t**2 * c[2] + t**3 * c[3]


def _tube(x, y, points: np.ndarray, radius: float, edge: float) -> np.ndarray:
    """Smooth mask of a curve of the given radius along the polyline ``points`` (K x 2).

    Distances are computed only inside the polyline's bounding box (plus the radius),
    where the mask can be non-zero.
    """
    points = np.asarray(points, dtype=np.float32)
    lo, hi = points.min(0), points.max(0)
    margin = radius + 4 * edge
    sel = (x > lo[0] - margin) & (x < hi[0] + margin) & (y > lo[1] - margin) & (y < hi[1] + margin)
    out = np.zeros_like(x)
    if sel.any():
        out[sel] = _soft(radius - _polyline_distance(x[sel], y[sel], points), edge)
    return out


def _sample_field(grid: np.ndarray, x: np.ndarray, y: np.ndarray, extent: float = 1.4):
    """Bilinear sample of a T x T field spanning [-extent, extent]^2 at points (x, y)."""
    t = grid.shape[0]
    fx = np.clip((x + extent) * ((t - 1) / (2 * extent)), 0, t - 1.001)
    fy = np.clip((y + extent) * ((t - 1) / (2 * extent)), 0, t - 1.001)
    jx, iy = np.floor(fx), np.floor(fy)
    wx, wy = fx - jx, fy - iy  # float32 weights
    flat = grid.ravel()
    k = iy.astype(np.intp) * t + jx.astype(np.intp)  # index of the top-left neighbour
    top = flat[k] + wx * (flat[k + 1] - flat[k])
    bottom = flat[k + t] + wx * (flat[k + t + 1] - flat[k + t])
    return top + wy * (bottom - top)


def _grid(width: int, height: int, size: int, p: Patient, rng: np.random.Generator,
          style: PhantomStyle = DEFAULT_STYLE):
    """Pixel grid mapped into the patient's anatomical frame (rotation, shift, scale: the
    patient's own pose and this film's positioning jitter).

    Returns x (right), y (down), each height x width float32; the central size x size
    square spans [-1, 1]^2 before the patient's pose is applied.
    """
    half = size / 2.0
    u = (np.arange(width, dtype=np.float32) + 0.5 - width / 2.0) / half
    v = (np.arange(height, dtype=np.float32) + 0.5 - height / 2.0) / half
    u, v = np.meshgrid(u, v)  # H x W each
    k = style.pose_jitter
    angle = math.radians(p.rotation + rng.normal(0.0, 0.8 * k))
    scale = p.scale * float(rng.normal(1.0, 0.015 * k))
    du, dv = (float(d) for d in rng.normal(0.0, 0.03 * k, size=2))
    c, s = math.cos(angle), math.sin(angle)
    x = (c * u + s * v - du) / scale
    y = (-s * u + c * v - dv) / scale
    return x, y


def _to_pixels(atten: np.ndarray, p: Patient, rng: np.random.Generator,
               style: PhantomStyle = DEFAULT_STYLE) -> np.ndarray:
    """Attenuation -> film brightness in uint8 (bright = dense), with the film's side marker
    (``style.marker``), exposure and noise."""
    if style.marker and rng.random() < style.marker:
        atten = atten + _marker(*atten.shape, rng)
    jitter = style.exposure_jitter
    # Clipped so that a wide jitter never inverts the film (no effect at the default 0.03).
    gain = p.gain * max(float(rng.normal(1.0, jitter)), 0.3)
    img = 1.0 - np.exp(-0.95 * gain * np.maximum(atten, 0.0))  # H x W in [0, 1)
    img = img ** (p.gamma * max(float(rng.normal(1.0, jitter)), 0.3))
    # Quantum mottle at the pixel scale plus a coarser grain; with noise_spread, each film
    # has its own noise level and grain size (detector, dose, processing).
    h, w = img.shape
    level, grain = 1.0, 2
    if style.noise_spread:
        level = math.exp(float(rng.uniform(-style.noise_spread, style.noise_spread)))
        grain = int(rng.integers(1, 4))
    img = img + rng.normal(0.0, style.noise * level, size=(h, w)).astype(np.float32)
    coarse = rng.standard_normal((h // grain + 1, w // grain + 1)).astype(np.float32)
    img = img + style.grain * level * np.repeat(np.repeat(coarse, grain, 0), grain, 1)[:h, :w]
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _marker(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A radiopaque side marker: a dense "L"-shaped block somewhere along the top of the
    film's central square (what the image cache keeps), placed on the detector: film
    coordinates, not the patient's."""
    side = max(3, round(0.09 * width))  # the block's side in pixels
    bar = max(1, side // 3)
    top = (height - width) // 2 + int(rng.integers(1, max(2, int(0.12 * width))))
    left = int(rng.integers(1, max(2, width - side - 1)))
    out = np.zeros((height, width), np.float32)
    out[top : top + side, left : left + bar] = 1.5  # the upright
    out[top + side - bar : top + side, left : left + side] = 1.5  # the foot
    return out


def _lung_envelope(x, y, cx, cy, a, b, edge) -> np.ndarray:
    """A lung's outline: a rounded apex, widening towards the base."""
    widen = a * (1.0 + 0.14 * np.clip((y - cy) / b, -1.0, 1.0))  # H x W half-width at y
    ratio = _power((x - cx) / widen, 3) + _power((y - cy) / b, 2)
    return _soft((1.0 - ratio) * (a / 2.5), edge)


def _vessels(p: Patient, x, y) -> np.ndarray:
    """Lung markings: the zero crossings of smooth random fields look like branching vessels."""
    f1 = _sample_field(p.texture[0], 1.6 * x, 1.6 * y)
    f2 = _sample_field(p.texture[1], 3.0 * x, 3.0 * y)
    return np.exp(-((f1 / 0.22) ** 2)) + 0.6 * np.exp(-((f2 / 0.2) ** 2))


# ---------------------------------------------------------------------------------------------
# Frontal film


def render_frontal(
    p: Patient, s: Study, projection: str, width: int, height: int, size: int,
    rng: np.random.Generator, style: PhantomStyle = DEFAULT_STYLE,
) -> np.ndarray:
    """One frontal (PA or AP) film of study ``s`` as a height x width uint8 array.

    The image's left is the patient's right (``side`` -1), as on a real film.
    """
    x, y = _grid(width, height, size, p, rng, style)
    edge = 1.6 / size  # anti-aliasing width: about a pixel
    ap = projection == "AP"
    x = x - p.shift
    w, h = p.width, p.height
    # AP films (sicker, often supine patients): poorer inspiration, magnified heart.
    dia = p.diaphragm + (-0.05 if ap else 0.0) + float(rng.normal(0.0, 0.015))

    # Body: trunk, shoulders and neck; the thick middle (mediastinum, abdomen) is densest.
    trunk = _ellipse(x, y, 0.0, 0.4, 0.98 * w, 1.4 * h, 3 * edge, power=4)
    neck = _ellipse(x, y, 0.0, -1.05, 0.2, 0.45, 3 * edge)
    shoulders = _ellipse(x, y, 0.0, -0.62, 1.08 * w, 0.24, 6 * edge, power=3)
    body = np.maximum(np.maximum(trunk, neck), shoulders)
    atten = p.soft * 0.9 * body  # H x W
    atten += 0.55 * p.soft * _ellipse(x, y, 0.0, 0.1, 0.8 * w, 1.15 * h, 0.1, power=3)

    # Lungs: two envelopes cut by the mediastinum and the hemidiaphragm domes.
    sides = {}
    lungs = np.zeros_like(x)
    for side in (-1.0, 1.0):  # -1: the patient's right (image left)
        cx, a, b = side * 0.37 * w, 0.3 * w, 0.74 * h
        envelope = _lung_envelope(x, y, cx, -0.04 * h, a, b, edge)
        apex = dia + (p.diaphragm_asym if side > 0 else 0.0)  # the right dome sits higher
        dome_c = cx - side * 0.05
        dome = apex + 0.24 * ((x - dome_c) / a) ** 2  # H x W: diaphragm height under x
        mediastinum = 0.075 * s.mediastinum + 0.03 * np.clip(y + 0.5, 0.0, 1.0)
        if side > 0:  # the aortic knob, then the left heart border leaving the mediastinum
            mediastinum = mediastinum + 0.06 * np.exp(-(((y + 0.42) / 0.08) ** 2))
            mediastinum = mediastinum + 0.1 * np.clip((y + 0.3) / 0.4, 0.0, 1.0) ** 2
        lung = envelope * _soft(dome - y, edge) * _soft(side * x - mediastinum, edge)
        lungs += lung
        # The lateral costophrenic angle: where the dome meets the lateral wall.
        lateral_x = cx + side * a * 1.08
        sides[side] = (cx, a, envelope, apex + 0.24 * ((lateral_x - dome_c) / a) ** 2)

    # Heart: from just right of the spine to the patient's left, resting on the diaphragm.
    ctr = s.ctr * (1.08 if ap else 1.0)
    thorax_w = 2 * (0.37 + 0.3 * 1.1) * w
    right = -0.11 - 0.25 * (ctr - 0.45)
    hw = 0.5 * ctr * thorax_w
    heart = _ellipse(x, y, right + hw + 0.3 * p.heart_dx, dia - 0.12, hw, 0.28 * h, 2 * edge,
                     angle=-p.heart_tilt)
    atten += 0.08 * heart

    # Air, with vessels densest around the hila.
    hila = np.exp(-(((np.abs(x) - 0.17) / 0.2) ** 2 + ((y + 0.08) / 0.28) ** 2))
    markings = (0.06 + 0.15 * hila) * _vessels(p, x, y) + 0.2 * hila
    air = 1.1 * p.air * lungs * (1.0 - 0.85 * heart) * (1.0 - markings)

    # Findings that replace air with fluid or tissue (fill = share of air displaced).
    fill = np.zeros_like(x)
    for side, (cx, a, envelope, cp) in sides.items():
        sev = s.effusion[0] if side < 0 else s.effusion[1]
        if sev < 0.08:
            continue
        # Upright, fluid settles to a level that rises with severity (first filling the
        # costophrenic recess: a blunted angle) under a meniscus climbing the lateral wall.
        t = np.clip((side * (x - cx) + a) / (2 * a), 0.0, 1.0)  # 0 medial .. 1 lateral
        rise = 0.85 * sev * h
        if ap:
            # Supine: the fluid layers posteriorly: a lower level under a basal veil.
            rise = 0.55 * rise
            veil = np.clip((y - cp + 0.95 * h) / (0.95 * h), 0.0, 1.0) ** 1.5
            fill = np.maximum(fill, 0.65 * min(sev, 1.0) * veil * envelope)
        top = cp - rise - (0.06 + 0.5 * rise) * t**3  # H x W
        fluid = _soft(y - top, 0.015 + 0.04 * sev) * envelope
        fill = np.maximum(fill, 0.95 * fluid)
    if s.edema > 0.3:
        batwing = np.exp(-(((np.abs(x) - 0.22) / 0.25) ** 2 + ((y + 0.02) / 0.35) ** 2))
        fill = np.maximum(fill, 0.6 * (s.edema - 0.3) / 0.7 * batwing)
    if s.consolidation is not None:
        side, cx, cy, r = s.consolidation
        patchy = _soft(_sample_field(p.texture[1], 2 * x, 2 * y) + 0.9, 0.3)
        fill = np.maximum(fill, 0.85 * _ellipse(x, y, side * cx * w, cy, 1.3 * r, r, 0.03) * patchy)
    if s.atelectasis is not None:
        side, cy, tilt = s.atelectasis
        band = _ellipse(x, y, side * 0.38 * w, dia - cy, 0.18 * w, 0.016, edge, angle=tilt)
        fill = np.maximum(fill, 0.8 * band)
    for side, nx, ny, r in p.nodules:
        fill = np.maximum(fill, 0.9 * _ellipse(x, y, side * nx * w, ny, r, r, edge))
    atten -= air * (1.0 - fill)

    if s.pneumothorax is not None:
        side, depth = s.pneumothorax
        cx, a, envelope, _ = sides[side]
        # An apical-lateral rim of air without markings, edged by the visceral pleural line.
        rim = side * (x - cx) - a + depth - 0.2 * np.clip(y + 0.3, 0.0, 1.0)
        collapsed = _soft(rim, edge) * envelope
        atten -= collapsed * p.air * 0.25
        atten += 0.15 * np.exp(-((rim / (1.2 * edge)) ** 2)) * envelope * _soft(-rim + 0.02, edge)

    # Bones.  Posterior ribs: arcs rising from the spine, then falling to the lateral wall.
    r_abs = np.abs(x)
    thorax = _ellipse(x, y, 0.0, -0.05 * h, 0.78 * w, 0.8 * h, 3 * edge, power=3)
    phase = (y - 0.9 * (r_abs - 0.3) ** 2) / p.rib_spacing + p.rib_phase
    posterior = (0.5 + 0.5 * np.cos(2 * math.pi * phase)) ** 6
    # Anterior ribs: fainter, sloping down towards the sternum, fading medially.
    phase = (y + 0.35 * r_abs) / (1.25 * p.rib_spacing) + 0.5 * p.rib_phase
    anterior = (0.5 + 0.5 * np.cos(2 * math.pi * phase)) ** 6 * _soft(r_abs - 0.22, 0.05)
    above = _soft(dia + 0.3 - y, 0.08)  # ribs fade over the upper abdomen
    atten += thorax * above * _soft(r_abs - 0.07, edge) * (0.16 * posterior + 0.07 * anterior)
    for side in (-1.0, 1.0):
        clavicle = _bezier((side * 0.07, -0.66 * h), (side * 0.32, -0.64 * h),
                           (side * 0.66, -0.8 * h))
        atten += 0.22 * _tube(x, y, clavicle, 0.028, edge)
        atten += 0.3 * _ellipse(x, y, side * 0.9 * w, -0.8 * h, 0.12, 0.13, 2 * edge)
    if p.fracture is not None and s.index >= p.fracture_study:
        side, k = p.fracture
        atten += 0.3 * _ellipse(x, y, side * 0.62 * w, -0.55 + k * p.rib_spacing, 0.035, 0.025, edge)
    vertebrae = 0.8 + 0.2 * np.cos(2 * math.pi * y / 0.12)
    atten += 0.12 * _soft(0.06 - r_abs, edge) * _soft(0.6 - y, 0.05) * vertebrae
    atten -= 0.22 * _soft(0.028 - np.abs(x + 0.01), edge) * _soft(-0.36 - y, 0.03)  # trachea

    if p.sex == "Female":  # breast shadows over the lower lung fields
        for side in (-1.0, 1.0):
            atten += 0.15 * _ellipse(x, y, side * 0.45 * w, 0.5, 0.3, 0.22, 0.05)
    if rng.random() < 0.5:  # gastric air under the left hemidiaphragm
        cy = dia + p.diaphragm_asym + 0.2
        atten -= 0.3 * _ellipse(x, y, 0.35 * w, cy, 0.09, 0.055, 0.02)
    if p.pleural_other:  # pleural thickening along the left lateral wall
        cx, a, envelope, _ = sides[1.0]
        rim = cx + a * 1.02 - x
        atten += 0.2 * _soft(0.03 - np.abs(rim), edge) * _soft(y + 0.3, 0.05) * envelope

    atten += _draw_devices(x, y, s, edge, dia)
    return _to_pixels(atten, p, rng, style)


def _draw_devices(x, y, s: Study, edge: float, dia: float) -> np.ndarray:
    """Bright curves of tubes and lines, and a pacemaker with its lead (frontal view)."""
    out = np.zeros_like(x)
    if "ett" in s.devices:  # endotracheal tube ending above the carina
        out += 0.5 * _tube(x, y, np.array([[-0.01, -1.4], [-0.01, -0.45]]), 0.013, edge)
    if "ngt" in s.devices:  # nasogastric tube down the oesophagus into the stomach
        pts = _bezier((0.03, -1.4), (0.03, dia + 0.1), (0.35, dia + 0.25), n=12)
        out += 0.45 * _tube(x, y, pts, 0.01, edge)
    if "cvc" in s.devices:  # central line from the right neck into the superior vena cava
        pts = _bezier((-0.5, -0.9), (-0.2, -0.6), (-0.06, -0.25), n=10)
        out += 0.5 * _tube(x, y, pts, 0.009, edge)
    if "pacemaker" in s.devices:  # generator over the left upper chest and its lead
        out += 0.9 * _ellipse(x, y, 0.58, -0.62, 0.1, 0.065, edge, power=4)
        pts = _bezier((0.55, -0.6), (0.1, -0.75), (-0.1, -0.1), (0.12, 0.3), n=12)
        out += 0.55 * _tube(x, y, pts, 0.01, edge)
    return out


# ---------------------------------------------------------------------------------------------
# Lateral film (the patient faces the image's left: anterior = -x, posterior = +x)


def render_lateral(
    p: Patient, s: Study, width: int, height: int, size: int, rng: np.random.Generator,
    style: PhantomStyle = DEFAULT_STYLE,
) -> np.ndarray:
    """One lateral film of study ``s`` as a height x width uint8 array."""
    x, y = _grid(width, height, size, p, rng, style)
    edge = 1.6 / size
    h = p.height
    depth = 0.82 + 0.15 * p.soft  # anteroposterior chest depth grows with habitus
    dia = p.diaphragm + float(rng.normal(0.0, 0.015))

    body = _ellipse(x, y, 0.06, 0.35, 0.9 * depth, 1.45 * h, 3 * edge, power=3)
    body = np.maximum(body, _ellipse(x, y, 0.15, -1.05, 0.32, 0.5, 3 * edge))  # neck
    atten = p.soft * 1.3 * body  # a lateral film crosses more tissue than a frontal one
    atten += 0.3 * _ellipse(x, y, -0.35, -0.9, 0.38, 0.2, 0.06, angle=0.45)  # raised arms

    # One air space: both lungs superimposed between the sternum and the spine.
    ant, post = -0.62 * depth, 0.52 * depth
    cx, a = (ant + post) / 2, (post - ant) / 2
    envelope = _lung_envelope(x, y, cx, -0.06 * h, a, 0.8 * h, edge)
    t = np.clip((x - ant) / (post - ant), 0.0, 1.0)  # 0 anterior .. 1 posterior
    # Diaphragm: a dome, low in the posterior costophrenic sulcus.
    dome = dia - 0.02 - 0.1 * np.sin(math.pi * t) + 0.36 * t**2  # H x W
    lung = envelope * _soft(dome - y, edge)
    k = s.ctr / 0.45
    heart = _ellipse(x, y, ant + 0.3 * k, dia - 0.12, 0.3 * k, 0.27, 2 * edge, angle=0.5)
    hila = np.exp(-(((x - cx - 0.08) / 0.2) ** 2 + ((y + 0.08) / 0.25) ** 2))
    markings = (0.06 + 0.15 * hila) * _vessels(p, x, y) + 0.25 * hila
    air = 0.95 * p.air * lung * (1.0 - 0.8 * heart) * (1.0 - markings)

    fill = np.zeros_like(x)
    sev = max(s.effusion) + 0.5 * min(s.effusion)  # both sides superimpose on a lateral
    if sev >= 0.08:
        bottom = dia - 0.02 + 0.36  # the posterior costophrenic sulcus
        rise = 0.42 * min(sev, 1.2) * h
        top = bottom - rise - (0.05 + 0.4 * rise) * t**3  # a level; the meniscus rises posteriorly
        fill = np.maximum(fill, 0.95 * _soft(y - top, 0.015 + 0.04 * sev) * envelope)
    if s.consolidation is not None:
        _, _, cy, r = s.consolidation
        fill = np.maximum(fill, 0.7 * _ellipse(x, y, cx + 0.1, cy, 1.2 * r, r, 0.03))
    for _, nx, ny, r in p.nodules:  # depth is unknown on a frontal: a fixed guess
        fill = np.maximum(fill, 0.8 * _ellipse(x, y, cx + 0.4 * nx - 0.1, ny, r, r, edge))
    atten -= air * (1.0 - fill)
    atten += 0.15 * heart

    # Spine: vertebral bodies separated by darker discs, with a gentle kyphosis.
    spine_x = post + 0.16 + 0.05 * (y + 0.2) ** 2
    discs = np.cos(math.pi * (y / 0.13 + p.rib_phase)) ** 16
    column = _soft(0.075 - np.abs(x - spine_x), edge) * _soft(1.3 - y, 0.05)
    atten += 0.3 * column * (1.0 - 0.6 * discs)
    phase = (y - 0.3 * (x - post)) / p.rib_spacing + p.rib_phase
    ribs = (0.5 + 0.5 * np.cos(2 * math.pi * phase)) ** 8
    atten += 0.08 * ribs * envelope * _soft(x - cx, 0.15)
    sternum = _soft(0.025 - np.abs(x - ant - 0.01), edge) * _soft(0.4 - np.abs(y + 0.1), 0.03)
    atten += 0.2 * sternum
    atten -= 0.15 * _tube(x, y, np.array([[0.08, -1.3], [0.14, -0.3]]), 0.035, edge)  # trachea
    if s.devices:
        pts = _bezier((0.08, -1.3), (0.08, -0.5), (-0.05, 0.1), n=12)
        atten += 0.4 * _tube(x, y, pts, 0.01, edge)
    if rng.random() < 0.5:  # gastric air
        atten -= 0.25 * _ellipse(x, y, cx - 0.1, dia + 0.25, 0.1, 0.06, 0.02)
    return _to_pixels(atten, p, rng, style)


# ---------------------------------------------------------------------------------------------
# The dataset


def _patient_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([VERSION, seed, index]))


def _image_shape(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """Width = size (the shorter side); portrait heights vary like CheXpert's films."""
    return size, int(round(size * float(rng.choice([1.0, 1.1, 1.2, 1.25]))))


def _encode_jpeg(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(pixels, mode="L").save(tmp, format="JPEG", quality=JPEG_QUALITY)
    os.replace(tmp, path)


def _generate_patient(task: tuple[int, int, str, int, Path, int, PhantomStyle]) -> list[list]:
    """Draw one patient's studies and images; returns their CSV rows (worker entry point)."""
    seed, index, split, number, out, size, style = task
    rng = _patient_rng(seed, index)
    patient = _sample_patient(rng, style)
    studies = _sample_studies(rng, patient, style)
    dates = study_dates(seed, index, studies)
    rows = []
    clean = split != "train"
    for study, day in zip(studies, dates):
        labels = study_labels(patient, study, rng, clean)
        age = int(round(min(study.age, 90.0)))  # CheXpert reports ages up to 90
        for view_no, projection in enumerate(study.views, start=1):
            width, height = _image_shape(rng, size)
            if projection == "LATERAL":
                pixels = render_lateral(patient, study, width, height, size, rng, style)
                kind, ap_pa = "lateral", ""
            else:
                pixels = render_frontal(patient, study, projection, width, height, size, rng,
                                        style)
                kind, ap_pa = "frontal", projection
            rel = f"{split}/patient{number:05d}/study{study.index + 1}/view{view_no}_{kind}.jpg"
            _encode_jpeg(pixels, out / rel)
            rows.append(
                [rel, patient.sex, age, kind.capitalize(), ap_pa, *labels, iso_date(day)]
            )
    return rows


def _generate_chunk(tasks: list[tuple]) -> list[list[list]]:
    return [_generate_patient(t) for t in tasks]


def assign_splits(
    n_patients: int, seed: int, shares: tuple[float, float, float] = DEFAULT_STYLE.split_shares
) -> list[str]:
    """Patient index -> split: a seeded shuffle cut at the train / valid / test ``shares``
    (80/10/10 by default; patient-disjoint by design)."""
    order = np.random.default_rng(np.random.SeedSequence([VERSION, seed, 1 << 30])).permutation(
        n_patients
    )
    n_valid = max(1, round(n_patients * shares[1])) if n_patients >= 3 else 0
    n_test = max(1, round(n_patients * shares[2])) if n_patients >= 3 else 0
    n_train = n_patients - n_valid - n_test
    splits = [""] * n_patients
    for rank, index in enumerate(order):
        splits[index] = "train" if rank < n_train else ("valid" if rank < n_train + n_valid else "test")
    return splits


def _write_csv(path: Path, rows: list[list]) -> None:
    """CheXpert-style CSV (``WRITTEN_COLUMNS``): labels as 1.0/0.0/-1.0, blanks empty, dates
    YYYY-MM-DD (byte-stable formatting)."""

    def cell(v) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.1f}"
        return str(v)

    lines = [",".join(WRITTEN_COLUMNS)] + [",".join(cell(v) for v in row) for row in rows]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _clear_previous(out: Path) -> None:
    """Remove a previous phantom from ``out`` (only files a phantom writes)."""
    for name in ("train", "valid", "test"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in ("train.csv", "valid.csv", "test.csv"):
        (out / name).unlink(missing_ok=True)


def make_phantom(
    out: Path,
    n_patients: int,
    image_size: int = 128,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    style: PhantomStyle | str | dict | None = None,
) -> dict:
    """Generate the phantom dataset under ``out`` in CheXpert's layout.

    Writes ``out/{train,valid,test}.csv`` (CheXpert's columns, paths relative to ``out``, and
    each study's date in ``Study Date``),
    the JPEGs under ``out/{split}/patientNNNNN/studyK/viewJ_{frontal,lateral}.jpg`` (width
    ``image_size``, height 1.0-1.25 x that) and ``out/phantom.json`` (parameters and the
    summary).  A directory already holding the phantom of the same parameters is reused as
    is; one holding another phantom is regenerated; any other non-empty directory is refused.

    Args:
        out: target directory.
        n_patients: number of patients (split about 80/10/10, patient-disjoint).
        image_size: the shorter side of every image in pixels.
        seed: the dataset seed; the same seed gives byte-identical files.
        workers: processes drawing patients in parallel (default: the usable CPUs).
        progress: show a progress bar on stderr.
        style: the generative model's knobs: a :class:`PhantomStyle`, the name of one in
            ``STYLES``, or a mapping of its fields (default: the original phantom).

    Returns:
        Summary counts: ``patients``, ``studies``, ``images``, ``frontal``, ``lateral``
        (each a dict per split) and ``effusion_prevalence`` per split (share of images
        labelled 1.0), plus ``out`` and ``seconds``.
    """
    out = Path(out)
    if n_patients < 1:
        raise MedaugError(f"the phantom needs at least 1 patient, got {n_patients}")
    if image_size < 16:
        raise MedaugError(f"phantom image size must be at least 16 pixels, got {image_size}")
    style = resolve_style(style)
    params = {"version": VERSION, "layout": LAYOUT, "n_patients": n_patients,
              "image_size": image_size, "seed": seed}
    if style != DEFAULT_STYLE:  # the original style is the style-less call's: not recorded
        params["style"] = style.to_dict()
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            previous = json.loads(manifest.read_text())
        except (OSError, ValueError):
            previous = {}
        if previous.get("complete") and previous.get("params") == params and all(
            (out / f"{s}.csv").exists() for s in SPLITS
        ):
            return previous["summary"]
        _clear_previous(out)  # another phantom, or one whose generation was interrupted
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedaugError(
            f"{out} exists and does not hold a phantom dataset; choose a new or empty directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    # Claim the directory first: an interrupted run leaves an incomplete manifest, so the
    # next run knows the files are its own to replace.
    _write_manifest(manifest, {"params": params, "complete": False})
    start = time.perf_counter()

    splits = assign_splits(n_patients, seed, style.split_shares)
    # Patient numbers follow CheXpert: train patients first, then valid, then test.
    numbers, counter = [0] * n_patients, 0
    for split in SPLITS:
        for index in range(n_patients):
            if splits[index] == split:
                counter += 1
                numbers[index] = counter
    tasks = [(seed, i, splits[i], numbers[i], out, image_size, style) for i in range(n_patients)]
    workers = usable_cpus() if workers is None else max(1, int(workers))
    chunk = max(1, min(32, math.ceil(n_patients / (4 * workers))))
    chunks = [tasks[i : i + chunk] for i in range(0, n_patients, chunk)]

    from tqdm import tqdm

    bar = tqdm(total=n_patients, desc="phantom patients", unit="patient", disable=not progress)
    results: list[list[list]] = []
    if workers == 1 or len(chunks) == 1:
        for c in chunks:
            results.extend(_generate_chunk(c))
            bar.update(len(c))
    else:
        with pool_context().Pool(min(workers, len(chunks))) as pool:
            for c, rows in zip(chunks, pool.imap(_generate_chunk, chunks)):
                results.extend(rows)
                bar.update(len(c))
    bar.close()

    by_split: dict[str, list[list]] = {s: [] for s in SPLITS}
    for index in sorted(range(n_patients), key=lambda i: numbers[i]):
        by_split[splits[index]].extend(results[index])
    summary = _summarise(by_split, splits)
    summary["out"] = str(out)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    for split, rows in by_split.items():
        _write_csv(out / f"{split}.csv", rows)
    _write_manifest(manifest, {"params": params, "complete": True, "summary": summary})
    return summary


def _write_manifest(path: Path, content: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def _summarise(by_split: dict[str, list[list]], splits: list[str]) -> dict:
    effusion = CSV_COLUMNS.index("Pleural Effusion")
    summary: dict = {k: {} for k in ("patients", "studies", "images", "frontal", "lateral")}
    summary["effusion_prevalence"] = {}
    for split, rows in by_split.items():
        summary["patients"][split] = splits.count(split)
        summary["studies"][split] = len({r[0].rsplit("/", 1)[0] for r in rows})
        summary["images"][split] = len(rows)
        summary["frontal"][split] = sum(r[3] == "Frontal" for r in rows)
        summary["lateral"][split] = sum(r[3] == "Lateral" for r in rows)
        pos = sum(r[effusion] == 1.0 for r in rows)
        summary["effusion_prevalence"][split] = round(pos / len(rows), 4) if rows else 0.0
    return summary


# ---------------------------------------------------------------------------------------------
# Figure


def _basal_contrast(image: np.ndarray) -> float:
    """Brightness of the lateral lung bases relative to the mid lung, on the brighter side
    (a crude effusion score of a frontal film, used to pick a telling example)."""
    h, w = image.shape
    sq = image[(h - w) // 2 : (h - w) // 2 + w].astype(np.float64)
    base, mid = slice(int(0.55 * w), int(0.75 * w)), slice(int(0.3 * w), int(0.5 * w))
    sides = (slice(int(0.1 * w), int(0.25 * w)), slice(int(0.75 * w), int(0.9 * w)))
    return max(sq[base, c].mean() - sq[mid, c].mean() for c in sides)


def plot_samples(out_dir: Path, png: Path, max_candidates: int = 200) -> Path:
    """A grid of phantom samples: one patient across studies (frontal over lateral) whose
    effusion changes visibly, and frontals of a few other patients.

    Images are shown as their central square, as the image cache keeps them.

    Args:
        out_dir: a phantom made by :func:`make_phantom`.
        png: the figure to write.
        max_candidates: patients examined when choosing the example.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from PIL import Image

    out_dir, png = Path(out_dir), Path(png)
    if not (out_dir / "train.csv").exists():
        raise MedaugError(f"{out_dir} holds no phantom (train.csv missing); run make_phantom first")
    df = pd.read_csv(out_dir / "train.csv")
    df["study"] = df["Path"].str.rsplit("/", n=1).str[0]
    df["patient"] = df["Path"].str.split("/").str[1]

    def load(path: str) -> np.ndarray:
        with Image.open(out_dir / path) as im:
            return np.asarray(im)

    # Candidates: several studies, effusion both present and absent, a lateral somewhere.
    per_patient = df.groupby("patient", sort=True)
    candidates = [
        pid for pid, g in per_patient
        if g["study"].nunique() >= 2 and (g["Frontal/Lateral"] == "Lateral").any()
        and (g["Pleural Effusion"] == 1.0).any() and (g["Pleural Effusion"] != 1.0).any()
    ][:max_candidates] or sorted(per_patient.groups)[:1]

    def contrast(pid: str) -> float:
        g = df[(df["patient"] == pid) & (df["Frontal/Lateral"] == "Frontal")]
        pos = [_basal_contrast(load(p)) for p in g.loc[g["Pleural Effusion"] == 1.0, "Path"]]
        neg = [_basal_contrast(load(p)) for p in g.loc[g["Pleural Effusion"] != 1.0, "Path"]]
        return max(pos) - min(neg) if pos and neg else -np.inf

    best = max(candidates, key=lambda pid: (contrast(pid), pid))
    studies = list(dict.fromkeys(df.loc[df["patient"] == best, "study"]))[:4]
    others = [p for p in sorted(per_patient.groups) if p != best][:4]
    ncols = max(len(studies), len(others), 1)
    fig, axes = plt.subplots(3, ncols, figsize=(2.3 * ncols, 7.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")

    def show(ax, row: pd.Series, title: str) -> None:
        img = load(row["Path"])
        h, w = img.shape
        ax.imshow(img[(h - w) // 2 : (h - w) // 2 + w], cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=8)

    def effusion_text(v: float) -> str:
        return {1.0: "effusion +", 0.0: "effusion -", -1.0: "effusion ?"}.get(v, "effusion blank")

    for j, study in enumerate(studies):
        rows = df[df["study"] == study]
        for i, kind in enumerate(("Frontal", "Lateral")):
            match = rows[rows["Frontal/Lateral"] == kind]
            if len(match):
                r = match.iloc[0]
                view = r["AP/PA"] if kind == "Frontal" else "lateral"
                show(axes[i, j], r, f"{study.split('/', 1)[1]} {view}\n{effusion_text(r['Pleural Effusion'])}")
    for j, pid in enumerate(others):
        frontal = df[(df["patient"] == pid) & (df["Frontal/Lateral"] == "Frontal")]
        if len(frontal):
            r = frontal.iloc[0]
            show(axes[2, j], r, f"{pid} {r['AP/PA']}\n{effusion_text(r['Pleural Effusion'])}")
    fig.suptitle(
        f"phantom: {best} across studies (frontal, lateral), other patients (bottom row)",
        fontsize=9,
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png)
    return png
