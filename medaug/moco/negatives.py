"""Negative strategies of the MedAug paper (Appendix B) and the contrastive loss that owns them.

Every strategy turns the logits of one batch of queries against the queue into a row of
negative logits plus a row of log-weights (``-inf`` = not a negative of that query).  The
InfoNCE loss of eq. (1)/(3) is then, per query,

    loss = -l_pos + logsumexp([l_pos, l_neg + log_w])

which covers plain masking (eq. 5), reweighting (eq. 6) and appended keys (eq. 7 and the
synthetic variant) without a Python loop over queries.  A new strategy is one function
registered here; nothing else in the package has to change.

Keys of the query's own image.  The paper's negatives are "all keys from the queue that are
not views of the query image": given the query images' ids, every strategy drops the slots
holding a key computed from the query's own image (log-weight -inf), including them in no
sample it appends.  With positive pairs drawn among other images of the patient, x itself
is often the partner of a later anchor, so its keys do sit in the queue.  The positive key
of the pair stays the positive.  Such slots are counted in ``stats["n_own"]`` (query-slot
pairs) and ``stats["n_own_queries"]`` (queries with at least one); ``keep_own_image``
keeps them as negatives (MoCo's plain queue) while still counting them.

Empty queue slots (group == -1, still holding MoCo's random initial keys):

* ``default`` keeps MoCo's semantics: all K slots are negatives, filled or not (less the
  keys of the query's own image).
* the laterality strategies only look at filled slots: ``same_lat_only`` and
  ``reweighted`` use the filled same-laterality (and, for reweighted, other-laterality)
  slots; ``appended`` and ``synthetic`` append samples drawn from filled same-laterality
  slots to the default row.
* a query whose laterality has no filled slot in the queue (other than keys of its own
  image) falls back to the default row (all K slots less its own image's, unweighted);
  such queries are counted in ``stats["n_fallback"]``.

"Laterality" is the paper's word for the group that makes a key a hard negative.  The
strategies only compare int codes: a query's group code with each slot's.  By default these
are the laterality codes of :mod:`medaug.moco.queue` (0 frontal, 1 lateral, 2 other); with
``moco.hard_negatives_by`` they are the codes of another grouping of the images
(projection, sex, age band or any categorical column, :mod:`medaug.data.groups`), and every
strategy works on them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from medaug.errors import MedaugError

NEG_INF = float("-inf")


@dataclass
class NegativeBatch:
    """Everything a strategy may look at for one batch (tensors already in float32).

    Attributes:
        q: N x C unit query vectors.
        l_neg: N x K logits of the queries against every queue slot, already divided by
            the temperature.
        keys: K x C queue keys.
        group: K group (laterality) code per slot (-1 = empty).
        q_group: N group (laterality) code per query.
        own: N x K bool, slot j holds a key of query i's own image and is no negative of it
            (all False for MoCo's plain queue).
        temperature: softmax temperature.
        t: target share of the negative weight for same-laterality keys (reweighted).
        m: number of same-laterality keys appended per query (appended, synthetic).
        generator: random source for the sampling strategies.
    """

    q: Tensor
    l_neg: Tensor
    keys: Tensor
    group: Tensor
    q_group: Tensor
    temperature: float
    t: float
    m: int
    generator: torch.Generator | None
    own: Tensor

    def filled(self) -> Tensor:
        """N x K bool: slot j is filled and holds no key of query i's own image."""
        return (self.group >= 0)[None, :] & ~self.own

    def same_group(self) -> Tensor:
        """N x K bool: slot j is filled, has the group (laterality) of query i and holds no
        key of query i's own image."""
        return (self.group[None, :] == self.q_group[:, None]) & self.filled()

    def default_log_w(self) -> Tensor:
        """N x K log-weights of the default row: 0, and -inf on the query's own image."""
        return torch.zeros_like(self.l_neg).masked_fill(self.own, NEG_INF)


# A strategy returns (negative logits N x L, log-weights N x L, stats).
Strategy = Callable[[NegativeBatch], tuple[Tensor, Tensor, dict]]
_REGISTRY: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator adding a negative strategy to the registry under ``name``."""

    def wrap(fn: Strategy) -> Strategy:
        if name in _REGISTRY:
            raise ValueError(f"negative strategy {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_strategies() -> list[str]:
    """Names of the registered negative strategies, in registration order."""
    return list(_REGISTRY)


def check_strategy(name: str) -> str:
    """Return ``name`` if it is a registered strategy, else raise a MedaugError listing them."""
    if name not in _REGISTRY:
        raise MedaugError(
            f"unknown negative strategy {name!r} (moco.negatives); "
            f"valid: {', '.join(_REGISTRY)}"
        )
    return name


# ---------------------------------------------------------------------------------------------
# Sampling helpers (public so that tests and analyses can check what was appended).


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Uniform [0, 1) float64 numbers drawn on the generator's device, moved to ``device``.

    float64, so that the integer choices made from them (``floor(u * c)``) are exactly
    those of a plain float64 reimplementation of the draw.
    """
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float64).to(device)


def sample_same_group(
    same: Tensor, m: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw up to ``m`` distinct same-group slots per query, uniformly at random.

    Random scores (one N x K float64 uniform draw) are drawn for every slot, non-eligible
    slots get -1, and ``topk`` picks the m highest: the eligible slots come first, in
    decreasing order of score, i.e. a uniformly random order.

    Args:
        same: N x K bool eligibility mask.
        m: samples wanted per query.
        generator: random source.

    Returns:
        index: N x m' long slot indices (m' = min(m, K)); entries past a row's count are
            arbitrary and must be ignored.
        valid: N x m' bool, True for the first min(count_i, m) entries of row i.
    """
    n, k = same.shape
    mm = min(m, k)
    scores = _rand((n, k), generator, same.device)  # N x K
    scores = torch.where(same, scores, torch.full_like(scores, -1.0))
    index = scores.topk(mm, dim=1).indices  # N x m'
    count = same.sum(dim=1)  # N
    valid = torch.arange(mm, device=same.device)[None, :] < count[:, None]  # N x m'
    return index, valid


def mix_pairs(
    sampled: Tensor, valid: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Synthetic keys: normalised mixtures u * s_i + (1 - u) * s_j of random sampled pairs.

    Per query as many mixtures as it has valid samples (m, or fewer on shortage).  With
    c >= 2 valid samples, (i, j) is uniform over the ordered pairs of two distinct samples:
    i uniform in [0, c), j' uniform in [0, c - 1), j = j' + (j' >= i).  With a single sample
    the mixture is that sample (i = j = 0).  u ~ U(0, 1).  The three draws are, in order,
    N x m uniforms for i, for j' and for u.

    Args:
        sampled: N x m x C the sampled keys.
        valid: N x m bool validity of the samples (a prefix of each row).
        generator: random source.

    Returns:
        synthetic: N x m x C unit vectors (rows past the count are arbitrary).
        pairs: N x m x 2 long positions (into the m samples) of s_i and s_j.
        u: N x m mixing coefficients.
    """
    n, mm, _ = sampled.shape
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)  # N x 1; 0-count rows are masked later
    others = (count - 1).clamp(min=1)  # N x 1: choices for the second sample
    i = (_rand((n, mm), generator, sampled.device) * count).long()  # N x m
    i = torch.minimum(i, count - 1)  # guards a product u * c rounded up to c
    j = (_rand((n, mm), generator, sampled.device) * others).long()  # N x m
    j = torch.minimum(j, others - 1)
    j = torch.where(count > 1, j + (j >= i).long(), i)  # skip i; a lone sample mixes with itself
    u = _rand((n, mm), generator, sampled.device).to(sampled.dtype)  # N x m
    s_i = sampled.gather(1, i[..., None].expand_as(sampled))  # N x m x C
    s_j = sampled.gather(1, j[..., None].expand_as(sampled))  # N x m x C
    h = u[..., None] * s_i + (1.0 - u[..., None]) * s_j  # N x m x C
    return F.normalize(h, dim=2), torch.stack([i, j], dim=2), u


# ---------------------------------------------------------------------------------------------
# Strategies.


@register_strategy("default")
def _default(b: NegativeBatch) -> tuple[Tensor, Tensor, dict]:
    """Eq. (4): every queue slot is a negative."""
    return b.l_neg, b.default_log_w(), {"n_fallback": 0, "n_short": 0}


@register_strategy("same_lat_only")
def _same_lat_only(b: NegativeBatch) -> tuple[Tensor, Tensor, dict]:
    """Eq. (5): only filled slots with the query's laterality are negatives."""
    same = b.same_group()  # N x K
    fallback = ~same.any(dim=1)  # N
    keep = same | fallback[:, None]  # N x K
    log_w = b.default_log_w().masked_fill(~keep, NEG_INF)
    return b.l_neg, log_w, {"n_fallback": int(fallback.sum()), "n_short": 0}


@register_strategy("reweighted")
def _reweighted(b: NegativeBatch) -> tuple[Tensor, Tensor, dict]:
    """Eq. (6): filled slots weighted so same-laterality keys hold a share t of the weight.

    w_same = t / r and w_other = (1 - t) / (1 - r), r = (same-laterality filled slots) /
    (filled slots), both counted without the keys of the query's own image.  The weights average to one over the filled slots, so the loss scale
    matches the unweighted loss.  When a query's laterality fills the whole queue (r = 1)
    the share t cannot be reached; its row is the unweighted filled queue.  t = 0.1 gives
    the hard negatives 10% (the formula); the paper's prose reads t = 0.1 as 90%, which is
    t = 0.9 here.
    """
    same = b.same_group()  # N x K
    other = b.filled() & ~same  # N x K
    n_same = same.sum(dim=1).to(b.l_neg.dtype)  # N
    n_other = other.sum(dim=1).to(b.l_neg.dtype)  # N
    r = n_same / (n_same + n_other).clamp(min=1.0)  # N
    fallback = n_same == 0  # N
    one_sided = n_other == 0  # N (r = 1)
    log_ws = math.log(b.t) - torch.log(r.clamp(min=1e-12))  # N
    log_wd = math.log(1.0 - b.t) - torch.log((1.0 - r).clamp(min=1e-12))  # N
    log_ws = torch.where(one_sided, torch.zeros_like(log_ws), log_ws)
    log_w = torch.full_like(b.l_neg, NEG_INF)  # N x K
    log_w = torch.where(same, log_ws[:, None], log_w)
    log_w = torch.where(other, log_wd[:, None], log_w)
    log_w = torch.where(fallback[:, None], b.default_log_w(), log_w)
    return b.l_neg, log_w, {"n_fallback": int(fallback.sum()), "n_short": 0}


def _appended_parts(b: NegativeBatch) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Shared part of appended/synthetic: the sample A of eq. (7) and its logits."""
    same = b.same_group()  # N x K
    index, valid = sample_same_group(same, b.m, b.generator)  # N x m, N x m
    l_app = b.l_neg.gather(1, index)  # N x m: appended keys are queue slots
    count = same.sum(dim=1)  # N
    stats = {"n_fallback": int((count == 0).sum()), "n_short": int((count < b.m).sum())}
    return index, valid, l_app, stats


def _mask(valid: Tensor, like: Tensor) -> Tensor:
    return torch.zeros_like(like).masked_fill(~valid, NEG_INF)


@register_strategy("appended")
def _appended(b: NegativeBatch) -> tuple[Tensor, Tensor, dict]:
    """Q^a = Q || A: m random filled same-laterality slots appended to the whole queue."""
    index, valid, l_app, stats = _appended_parts(b)
    logits = torch.cat([b.l_neg, l_app], dim=1)  # N x (K + m)
    log_w = torch.cat([b.default_log_w(), _mask(valid, l_app)], dim=1)
    stats["debug"] = {"appended_index": index, "appended_valid": valid}
    return logits, log_w, stats


@register_strategy("synthetic")
def _synthetic(b: NegativeBatch) -> tuple[Tensor, Tensor, dict]:
    """Q || A || H: the appended sample plus as many normalised mixtures of its pairs."""
    index, valid, l_app, stats = _appended_parts(b)
    sampled = b.keys[index]  # N x m x C
    synthetic, pairs, u = mix_pairs(sampled, valid, b.generator)  # N x m x C
    l_syn = torch.einsum("nc,nmc->nm", b.q, synthetic) / b.temperature  # N x m
    logits = torch.cat([b.l_neg, l_app, l_syn], dim=1)  # N x (K + 2m)
    log_w = torch.cat([b.default_log_w(), _mask(valid, l_app), _mask(valid, l_syn)], dim=1)
    stats["debug"] = {
        "appended_index": index,
        "appended_valid": valid,
        "synthetic_keys": synthetic,
        "synthetic_pairs": pairs,
        "synthetic_u": u,
    }
    return logits, log_w, stats


# ---------------------------------------------------------------------------------------------


def _queue_tensors(queue) -> tuple[Tensor, Tensor, Tensor | None]:
    if isinstance(queue, (tuple, list)):
        if len(queue) not in (2, 3):
            raise ValueError("queue must be a KeyQueue or a tuple (keys, group[, image])")
        keys, group, image = (*queue, None) if len(queue) == 2 else queue
    else:
        keys, group, image = queue.keys, queue.group, queue.image
    return keys, group, image


def contrastive_loss(
    q: Tensor,
    k: Tensor,
    queue,
    q_group: Tensor,
    strategy: str,
    temperature: float,
    *,
    t: float = 0.1,
    m: int = 16,
    generator: torch.Generator | None = None,
    q_image: Tensor | None = None,
    keep_own_image: bool = False,
    debug: bool = False,
) -> tuple[Tensor, dict]:
    """MoCo's InfoNCE loss with the negatives chosen by ``strategy``.

    Args:
        q: N x C unit query vectors (with gradient).
        k: N x C unit positive keys (no gradient needed).
        queue: a :class:`~medaug.moco.queue.KeyQueue`, or a tuple (keys K x C, group K) or
            (keys, group, image K): each slot's group code (-1 empty) and the id of its key
            image (-1 empty).
        q_group: N group codes of the query images: laterality codes (0 frontal, 1 lateral,
            2 other) or those of the queue's other grouping.
        strategy: a name from :func:`list_strategies`.
        temperature: softmax temperature (reference: 0.2).
        t: share of the negative weight given to same-laterality keys (reweighted).
        m: same-laterality keys appended per query (appended, synthetic).
        generator: random source for appended/synthetic (on any device).
        q_image: N ids of the query images (the ids the queue stores); keys of a query's own
            image are then no negatives of it.  None: the plain queue, nothing counted.
        keep_own_image: count the keys of the query's own image but keep them as negatives
            (MoCo's plain queue).
        debug: also return the sampled indices, synthetic keys, the logits and log-weights
            under ``stats["debug"]``.

    Returns:
        The mean loss over the N queries (a scalar, float32) and stats:
        ``n_fallback`` (queries with no filled same-laterality slot, which used the default
        row), ``n_short`` (queries with fewer than m such slots; appended/synthetic),
        ``n_own`` (query-slot pairs where the slot holds a key of the query's own image) and
        ``n_own_queries`` (queries with at least one such slot).
    """
    fn = _REGISTRY[check_strategy(strategy)]
    if not 0.0 < t < 1.0:
        raise MedaugError(f"reweighting share t must lie in (0, 1), got {t}")
    if m < 1:
        raise MedaugError(f"number of appended negatives m must be positive, got {m}")
    keys, group, image = _queue_tensors(queue)
    if q_image is not None and image is None:
        raise ValueError("q_image needs the queue's image ids: pass (keys, group, image)")
    # The loss runs in float32 even under autocast: exp/logsumexp of 1/T-scaled logits.
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = q.float()
        keys = keys.detach().float()
        k = k.detach().float()
        l_pos = (q * k).sum(dim=1, keepdim=True) / temperature  # N x 1
        l_neg = q @ keys.T / temperature  # N x K
        if q_image is None:
            own = torch.zeros_like(l_neg, dtype=torch.bool)  # N x K
        else:
            # Empty slots hold image -1, which no query has.
            own = image.to(q.device)[None, :] == q_image.to(q.device)[:, None]  # N x K
        n_own = own.sum(dim=1)  # N
        batch = NegativeBatch(
            q=q,
            l_neg=l_neg,
            keys=keys,
            group=group.to(q.device).long(),
            q_group=q_group.to(q.device).long(),
            temperature=temperature,
            t=t,
            m=m,
            generator=generator,
            own=torch.zeros_like(own) if keep_own_image else own,
        )
        logits, log_w, stats = fn(batch)  # N x L, N x L
        full = torch.cat([l_pos, logits + log_w], dim=1)  # N x (1 + L)
        loss = (torch.logsumexp(full, dim=1) - l_pos[:, 0]).mean()
    stats["n_own"] = int(n_own.sum())
    stats["n_own_queries"] = int((n_own > 0).sum())
    extra = stats.pop("debug", {})
    if debug:
        stats["debug"] = {**extra, "logits": logits, "log_weights": log_w, "l_pos": l_pos}
    return loss, stats
