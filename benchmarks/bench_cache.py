"""Image cache: reading random batches from the memory-mapped cache versus decoding the files.

Figures (measured side by side in this process on a freshly generated phantom):

- ``phantom_s``: generating the phantom (``--patients`` chosen to give about ``--n`` images);
- ``build_s``: building the cache of its first ``--n`` images (decode, resize, crop, write);
- ``cache_images_per_s``: random batches of 32 read from the cache (``cache[indices]``);
- ``decode_images_per_s``: the same batches decoded and resized from the JPEGs every time
  (the same ``load_image`` the cache is built with);
- ``speedup`` = cache_images_per_s / decode_images_per_s.

The cache is read with a warm page cache, as during training once the first epoch has
touched the file.

    python benchmarks/bench_cache.py [--json PATH] [--n 500] [--size 128] [--workers W]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medaug.data.cache import build_cache, load_image
from medaug.data.load import load_table
from medaug.data.phantom import make_phantom

BATCH = 32
IMAGES_PER_PATIENT = 3.8  # phantom average, to size the phantom for --n images


def _throughput(read, size: int, batches: list[np.ndarray], min_seconds: float) -> float:
    """Images per second of ``read(indices)`` over the batches (repeated for min_seconds)."""
    done, start = 0, time.perf_counter()
    while True:
        for idx in batches:
            out = read(idx)
            assert out.shape == (len(idx), size, size)
            done += len(idx)
        if time.perf_counter() - start >= min_seconds:
            return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, metavar="PATH", help="write the figures here")
    parser.add_argument("--n", type=int, default=500, help="images to cache")
    parser.add_argument("--size", type=int, default=128, help="image and cache resolution")
    parser.add_argument("--workers", type=int, default=None, help="processes for phantom/cache")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum time per reader")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        patients = max(3, int(np.ceil(args.n / IMAGES_PER_PATIENT * 1.15)))
        make_phantom(tmp / "data", patients, image_size=args.size, seed=0,
                     workers=args.workers, progress=False)
        phantom_s = time.perf_counter() - start
        table = load_table("chexpert", tmp / "data" / "train.csv", include_siblings=True)
        table = table.iloc[: args.n].reset_index(drop=True)
        root = Path(table.attrs["root"])

        start = time.perf_counter()
        cache, table = build_cache(table, root, args.size, tmp / "cache",
                                   workers=args.workers, progress=False)
        build_s = time.perf_counter() - start
        n = len(cache)

        rng = np.random.default_rng(0)
        batches = [rng.choice(n, size=min(BATCH, n), replace=False) for _ in range(40)]
        paths = [str(root / p) for p in table["path"]]
        cache[np.arange(n)]  # warm the page cache, as after a first epoch

        def decode(idx: np.ndarray) -> np.ndarray:
            return np.stack([load_image(paths[i], args.size) for i in idx])

        # Alternate the two readers so that both see the same machine load.
        cache_rates, decode_rates = [], []
        for _ in range(3):
            cache_rates.append(_throughput(cache.__getitem__, args.size, batches, args.seconds / 3))
            decode_rates.append(_throughput(decode, args.size, batches[:8], args.seconds / 3))
        cache_rate, decode_rate = float(np.median(cache_rates)), float(np.median(decode_rates))

    figures = {
        "n_images": n,
        "size": args.size,
        "batch": BATCH,
        "phantom_s": round(phantom_s, 3),
        "build_s": round(build_s, 3),
        "cache_images_per_s": round(cache_rate, 1),
        "decode_images_per_s": round(decode_rate, 1),
        "speedup": round(cache_rate / decode_rate, 2),
    }
    print(f"phantom: {patients} patients in {phantom_s:.2f} s; cache of {n} images at "
          f"{args.size} px built in {build_s:.2f} s")
    print(f"random batches of {BATCH}: cache {cache_rate:,.0f} img/s, "
          f"decode+resize {decode_rate:,.0f} img/s, speedup x{cache_rate / decode_rate:.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
