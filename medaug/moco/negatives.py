"""Negative strategies of the MedAug paper (Appendix B) and the contrastive loss that owns them.

Every strategy turns the logits of one batch of queries against the queue into a row of
negative logits plus a row of log-weights (``-inf`` = not a negative of that query).  The
InfoNCE loss of eq. (1)/(3) is then, per query,

    loss = -l_pos + logsumexp([l_pos, l_neg + log_w])

which covers plain masking (eq. 5), reweighting (eq. 6) and appended keys (eq. 7 and the
synthetic variant) without a Python loop over queries.  A new strategy is one function
registered here; nothing else in the package has to change.

Empty queue slots (view == -1, still holding MoCo's random initial keys):

* ``default`` keeps MoCo's semantics: all K slots are negatives, filled or not.
* the laterality strategies only look at filled slots: ``same_lat_only`` and
  ``reweighted`` use the filled same-laterality (and, for reweighted, other-laterality)
  slots; ``appended`` and ``synthetic`` append samples drawn from filled same-laterality
  slots to the default row.
* a query whose laterality has no filled slot in the queue falls back to the default row
  (all K slots, unweighted); such queries are counted in ``stats["n_fallback"]``.

Laterality codes are those of :mod:`medaug.moco.queue`: 0 frontal, 1 lateral, 2 other.
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
        view: K laterality code per slot (-1 = empty).
        q_view: N laterality code per query.
        temperature: softmax temperature.
        t: target share of the negative weight for same-laterality keys (reweighted).
        m: number of same-laterality keys appended per query (appended, synthetic).
        generator: random source for the sampling strategies.
    """

    q: Tensor
    l_neg: Tensor
    keys: Tensor
    view: Tensor
    q_view: Tensor
    temperature: float
    t: float
    m: int
    generator: torch.Generator | None

    def same_laterality(self) -> Tensor:
        """N x K bool: slot j is filled and has the laterality of query i."""
        return (self.view[None, :] == self.q_view[:, None]) & (self.view[None, :] >= 0)


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
            f"unknown negative strategy {name!r} (pretrain.negatives); "
            f"valid: {', '.join(_REGISTRY)}"
        )
    return name


# ---------------------------------------------------------------------------------------------
# Sampling helpers (public so that tests and analyses can check what was appended).


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device, moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def sample_same_laterality(
    same: Tensor, m: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw up to ``m`` distinct same-laterality slots per query, uniformly at random.

    Random scores are drawn for every slot, non-eligible slots get -1, and ``topk`` picks
    the m highest: the eligible slots come first, in a uniformly random order.

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

    Per query as many mixtures as it has valid samples (m, or fewer on shortage).  i and j
    are drawn independently and uniformly among the query's valid samples (so i == j is
    possible, and is the only choice when a single sample exists); u ~ U(0, 1).

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
    i = (_rand((n, mm), generator, sampled.device) * count).long().clamp(max=mm - 1)  # N x m
    i = torch.minimum(i, count - 1)
    j = (_rand((n, mm), generator, sampled.device) * count).long().clamp(max=mm - 1)  # N x m
    j = torch.minimum(j, count - 1)
    u = _rand((n, mm), generator, sampled.device)  # N x m
    s_i = sampled.gather(1, i[..., None].expand_as(sampled))  # N x m x C
    s_j = sampled.gather(1, j[..., None].expand_as(sampled))  # N x m x C
    h = u[..., None] * s_i + (1.0 - u[..., None]) * s_j  # N x m x C
    return F.normalize(h, dim=2), torch.stack([i, j], dim=2), u


# ---------------------------------------------------------------------------------------------
# Strategies.


@register_strategy("default")
def _default(b: NegativeBatch) -> tuple[Tensor, Tensor, dict]:
    """Eq. (4): every queue slot is a negative."""
    return b.l_neg, torch.zeros_like(b.l_neg), {"n_fallback": 0, "n_short": 0}


@register_strategy("same_lat_only")
def _same_lat_only(b: NegativeBatch) -> tuple[Tensor, Tensor, dict]:
    """Eq. (5): only filled slots with the query's laterality are negatives."""
    same = b.same_laterality()  # N x K
    fallback = ~same.any(dim=1)  # N
    keep = same | fallback[:, None]  # N x K
    log_w = torch.zeros_like(b.l_neg).masked_fill(~keep, NEG_INF)
    return b.l_neg, log_w, {"n_fallback": int(fallback.sum()), "n_short": 0}


@register_strategy("reweighted")
def _reweighted(b: NegativeBatch) -> tuple[Tensor, Tensor, dict]:
    """Eq. (6): filled slots weighted so same-laterality keys hold a share t of the weight.

    w_same = t / r and w_other = (1 - t) / (1 - r), r = (same-laterality filled slots) /
    (filled slots).  The weights average to one over the filled slots, so the loss scale
    matches the unweighted loss.  When a query's laterality fills the whole queue (r = 1)
    the share t cannot be reached; its row is the unweighted filled queue.  t = 0.1 gives
    the hard negatives 10% (the formula); the paper's prose reads t = 0.1 as 90%, which is
    t = 0.9 here.
    """
    same = b.same_laterality()  # N x K
    filled = (b.view >= 0)[None, :]  # 1 x K
    other = filled & ~same  # N x K
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
    log_w = torch.where(fallback[:, None], torch.zeros_like(log_w), log_w)
    return b.l_neg, log_w, {"n_fallback": int(fallback.sum()), "n_short": 0}


def _appended_parts(b: NegativeBatch) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Shared part of appended/synthetic: the sample A of eq. (7) and its logits."""
    same = b.same_laterality()  # N x K
    index, valid = sample_same_laterality(same, b.m, b.generator)  # N x m, N x m
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
    log_w = torch.cat([torch.zeros_like(b.l_neg), _mask(valid, l_app)], dim=1)
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
    log_w = torch.cat([torch.zeros_like(b.l_neg), _mask(valid, l_app), _mask(valid, l_syn)], dim=1)
    stats["debug"] = {
        "appended_index": index,
        "appended_valid": valid,
        "synthetic_keys": synthetic,
        "synthetic_pairs": pairs,
        "synthetic_u": u,
    }
    return logits, log_w, stats


# ---------------------------------------------------------------------------------------------


def _queue_tensors(queue) -> tuple[Tensor, Tensor]:
    if isinstance(queue, (tuple, list)):
        keys, view = queue
    else:
        keys, view = queue.keys, queue.view
    return keys, view


def contrastive_loss(
    q: Tensor,
    k: Tensor,
    queue,
    q_view: Tensor,
    strategy: str,
    temperature: float,
    *,
    t: float = 0.1,
    m: int = 16,
    generator: torch.Generator | None = None,
    debug: bool = False,
) -> tuple[Tensor, dict]:
    """MoCo's InfoNCE loss with the negatives chosen by ``strategy``.

    Args:
        q: N x C unit query vectors (with gradient).
        k: N x C unit positive keys (no gradient needed).
        queue: a :class:`~medaug.moco.queue.KeyQueue`, or a pair (keys K x C, view K).
        q_view: N laterality codes of the query images (0 frontal, 1 lateral, 2 other).
        strategy: a name from :func:`list_strategies`.
        temperature: softmax temperature (reference: 0.2).
        t: share of the negative weight given to same-laterality keys (reweighted).
        m: same-laterality keys appended per query (appended, synthetic).
        generator: random source for appended/synthetic (on any device).
        debug: also return the sampled indices, synthetic keys, the logits and log-weights
            under ``stats["debug"]``.

    Returns:
        The mean loss over the N queries (a scalar, float32) and stats:
        ``n_fallback`` (queries with no filled same-laterality slot, which used the default
        row) and ``n_short`` (queries with fewer than m such slots; appended/synthetic).
    """
    fn = _REGISTRY[check_strategy(strategy)]
    if not 0.0 < t < 1.0:
        raise MedaugError(f"reweighting share t must lie in (0, 1), got {t}")
    if m < 1:
        raise MedaugError(f"number of appended negatives m must be positive, got {m}")
    keys, view = _queue_tensors(queue)
    # The loss runs in float32 even under autocast: exp/logsumexp of 1/T-scaled logits.
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = q.float()
        keys = keys.detach().float()
        k = k.detach().float()
        l_pos = (q * k).sum(dim=1, keepdim=True) / temperature  # N x 1
        l_neg = q @ keys.T / temperature  # N x K
        batch = NegativeBatch(
            q=q,
            l_neg=l_neg,
            keys=keys,
            view=view.to(q.device).long(),
            q_view=q_view.to(q.device).long(),
            temperature=temperature,
            t=t,
            m=m,
            generator=generator,
        )
        logits, log_w, stats = fn(batch)  # N x L, N x L
        full = torch.cat([l_pos, logits + log_w], dim=1)  # N x (1 + L)
        loss = (torch.logsumexp(full, dim=1) - l_pos[:, 0]).mean()
    extra = stats.pop("debug", {})
    if debug:
        stats["debug"] = {**extra, "logits": logits, "log_weights": log_w, "l_pos": l_pos}
    return loss, stats
