"""Draw one positive partner per anchor per epoch, uniformly from its set (eq. 2)."""

from __future__ import annotations

import numpy as np

from medaug.errors import MedaugError
from medaug.pairs.index import PairIndex


class PairSampler:
    """Uniform partner draws from a :class:`PairIndex`, reproducible per (seed, epoch).

    Each epoch has its own random stream derived from (seed, epoch), so an epoch's draw does
    not depend on which epochs were drawn before: a resumed run reproduces it exactly.
    """

    def __init__(self, index: PairIndex, seed: int = 0) -> None:
        if int(seed) < 0:
            raise MedaugError(f"pair sampler seed must be non-negative, got {seed}")
        self.index = index
        self.seed = int(seed)
        self._first = index.indptr[:-1]  # A
        self._sizes = np.diff(index.indptr).astype(np.float64)  # A

    def sample(self, epoch: int) -> np.ndarray:
        """Partner row positions for ``epoch``.

        Returns:
            A int64 array aligned with ``index.anchors``: element i is drawn uniformly from
            the set of anchor i.
        """
        if int(epoch) < 0:
            raise MedaugError(f"epoch must be non-negative, got {epoch}")
        rng = np.random.default_rng([self.seed, int(epoch)])
        u = rng.random(len(self._first))  # A, in [0, 1)
        # floor(u * size) is uniform on 0..size-1; the clamp guards against rounding up.
        offset = np.minimum((u * self._sizes).astype(np.int64), self._sizes.astype(np.int64) - 1)
        return self.index.indices[self._first + offset]
