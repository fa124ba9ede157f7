"""The image cache: every image decoded and resized once into one memory-mapped uint8 array.

Layout under ``cache_dir``::

    <key>/images.npy     N x S x S uint8 (greyscale; shorter side resized to S, centre crop)
    <key>/table.parquet  the N rows actually cached, in array order
    <key>/rows.npy       their positions in the table the cache was built from
    <key>/meta.json      size, counts, dropped images; written last
    <key>.partial/       a build in progress (resumed by the next call)
    <key>.lock           serialises concurrent builders of the same cache

The key hashes the table's ordered image ids and paths and the resolution
(:func:`cache_key`), so the same table at the same size reuses the cache, and any change
to the rows builds a new one.  A build decodes in parallel chunks straight into the
partial array, remembers which rows are done, and becomes visible only by renaming the
finished directory: a crash never leaves a cache that looks complete.

The resize matches torchvision's ``Resize(S)`` + ``CenterCrop(S)`` on a PIL image
(bilinear, antialiased), which the MedAug and MoCo-CXR pipelines apply to every image.
Images wider than 8 bits (16-bit PNGs such as PadChest's) are first stretched to 8 bits
from their own minimum and maximum (:func:`to_grey8`); every other image is converted to
greyscale exactly as PIL's ``convert("L")`` does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medaug.data.workers import pool_context, usable_cpus
from medaug.errors import MedaugError
from medaug.files import write_text_atomic

# Part of the key: bumped when decoding changes (2: wide greyscale stretched, no longer clipped).
CACHE_VERSION = 2
# Row states while building.
TODO, OK, MISSING, CORRUPT = -1, 0, 1, 2
SHOWN_BAD = 3  # bad paths quoted in an error message
KEPT_BAD = 100  # bad paths remembered in meta.json


# ---------------------------------------------------------------------------------------------
# One image

# Greyscale modes PIL opens wider-than-8-bit files in: 16-bit PNG / TIFF (any byte order)
# and 32-bit signed integers.  ``convert("L")`` clips these at 255 instead of rescaling.
WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def to_grey8(image: Image.Image) -> Image.Image:
    """The image as 8-bit greyscale (mode ``L``).

    Rule: a greyscale image wider than 8 bits (modes in :data:`WIDE_GREY_MODES`) is
    stretched linearly from its own minimum to its own maximum onto 0..255, rounding half
    up; a constant one becomes all 0.  The file's declared depth is no guide: PadChest's
    16-bit PNGs hold 12-bit or narrower data, which scaling by 65535 would leave almost
    black and ``convert("L")`` clips almost white.  The stretch applies only to these
    modes, never to 8-bit images (where it would change the contrast): ``L`` is returned
    as is, and colour, palette, alpha and bilevel images go through ``convert("L")``
    (ITU-R 601 luma for colour).

    Args:
        image: a PIL image (any mode).

    Returns:
        A PIL image of mode ``L`` and the same size.
    """
    if image.mode == "L":
        return image
    if image.mode not in WIDE_GREY_MODES:
        return image.convert("L")
    values = np.asarray(image)  # H x W, uint16 or int32
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo
    if span == 0:
        return Image.new("L", image.size, 0)

    def scale(offsets: np.ndarray) -> np.ndarray:
        # round(offsets * 255 / span), half up, in exact integer arithmetic
        return ((offsets * 510 + span) // (2 * span)).astype(np.uint8)

    if span < 1 << 16:  # one table over lo..hi, then a lookup per pixel (faster)
        return Image.fromarray(scale(np.arange(span + 1, dtype=np.int64))[values - lo])
    return Image.fromarray(scale(values.astype(np.int64) - lo))


def resize_crop(image, size: int) -> np.ndarray:
    """Greyscale (:func:`to_grey8`), resize the shorter side to ``size`` (bilinear),
    centre-crop size x size.

    Follows torchvision's ``Resize(size)`` then ``CenterCrop(size)`` on PIL images: the
    longer side becomes ``int(size * long / short)`` and the crop offset
    ``int(round((side - size) / 2))``.

    Args:
        image: a PIL image (any mode).
        size: output side S.

    Returns:
        S x S uint8 array.
    """
    image = to_grey8(image)
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode one image file and :func:`resize_crop` it to size x size uint8.

    Large JPEGs are decoded at a reduced DCT scale when that still leaves at least twice
    the target resolution (a no-op for sources under four times the target): several
    times faster on full-resolution films, and the antialiased resize that follows sees
    enough pixels for the difference to stay within a grey level or two.

    Raises:
        FileNotFoundError: the file does not exist.
        OSError, ValueError, SyntaxError: the file is not a readable image.
    """
    with Image.open(path) as image:
        w, h = image.size
        if w < 1 or h < 1:
            raise ValueError(f"{path}: empty image")
        scale = 2.0 * size / min(w, h)
        if scale < 0.5:
            image.draft(image.mode, (math.ceil(w * scale), math.ceil(h * scale)))
        image.load()
        return resize_crop(image, size)


def _decode_chunk(task: tuple[str, int, list[str], int]) -> tuple[int, np.ndarray]:
    """Decode rows [start, start + len(paths)) into the partial array (worker entry point).

    Returns (start, status per row).  The rows are flushed to disk before returning, so a
    status recorded by the parent always describes pixels that are really there.
    """
    array_path, start, paths, size = task
    images = np.load(array_path, mmap_mode="r+")  # N x S x S
    status = np.full(len(paths), OK, dtype=np.int8)
    for i, path in enumerate(paths):
        try:
            images[start + i] = load_image(path, size)
        except FileNotFoundError:
            status[i] = MISSING
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            status[i] = CORRUPT
        if status[i] != OK:
            images[start + i] = 0
    images.flush()
    del images
    return start, status


# ---------------------------------------------------------------------------------------------
# The cache


def cache_key(table: pd.DataFrame, size: int) -> str:
    """Hash of the table's ordered ``image_id`` and ``path`` columns and the resolution.

    Args:
        table: N rows with at least ``image_id`` and ``path``.
        size: cache resolution S.

    Returns:
        20 hex characters; the same rows in the same order at the same size give the same key.
    """
    _require_columns(table)
    digest = hashlib.sha256(f"medaug image cache v{CACHE_VERSION}\nsize={int(size)}\n".encode())
    digest.update(f"rows={len(table)}\n".encode())
    for column in ("image_id", "path"):
        digest.update("\0".join(table[column].astype(str).tolist()).encode("utf-8"))
        digest.update(b"\1")
    return digest.hexdigest()[:20]


def _require_columns(table: pd.DataFrame) -> None:
    missing = [c for c in ("image_id", "path") if c not in table.columns]
    if missing:
        raise MedaugError(
            f"the table to cache lacks column(s) {', '.join(missing)}; it needs image_id and path"
        )


class ImageCache:
    """A finished cache: ``images`` (N x S x S uint8 memmap) and the matching ``table``.

    Indexing returns in-memory copies: ``cache[i]`` is S x S, ``cache[[i, j]]`` or a slice
    is B x S x S.  Pickling stores only the directory, so the cache can be handed to data
    loader workers or Ray tasks, each of which maps the file itself.
    """

    def __init__(self, path: Path, images: np.ndarray, table: pd.DataFrame, info: dict):
        self.path = Path(path)
        self.images = images
        self.table = table
        self.info = info
        self.size = int(images.shape[1])

    @classmethod
    def open(cls, path: str | Path) -> ImageCache:
        """Open the finished cache directory ``path`` (``<cache_dir>/<key>``)."""
        path = Path(path)
        meta = path / "meta.json"
        if not meta.exists():
            raise MedaugError(f"{path} is not a finished image cache (no meta.json)")
        try:
            info = json.loads(meta.read_text())
        except ValueError as err:
            raise MedaugError(f"{meta} is not valid JSON: {err}") from None
        images = np.load(path / "images.npy", mmap_mode="r")
        table = pd.read_parquet(path / "table.parquet")
        from medaug.data.schema import COLUMNS, validate

        if set(COLUMNS) <= set(table.columns):  # a canonical table: restore its dtypes
            table = validate(table, str(path / "table.parquet"))
        if images.shape != (len(table), info["size"], info["size"]):
            raise MedaugError(
                f"{path}: images {images.shape} do not match the table ({len(table)} rows) and "
                f"size {info['size']}; delete the directory to rebuild it"
            )
        return cls(path, images, table, info)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, indices) -> np.ndarray:
        if isinstance(indices, (list, tuple)):
            indices = np.asarray(indices, dtype=np.intp)
        if isinstance(indices, np.ndarray) and indices.ndim == 1 and len(indices) > 1:
            # Read in file order (kinder to the page cache), return in the order asked.
            order = np.argsort(indices, kind="stable")
            out = np.empty((len(indices), self.size, self.size), dtype=np.uint8)
            out[order] = self.images[indices[order]]
            return out
        return np.array(self.images[indices])

    def __reduce__(self):
        return (ImageCache.open, (str(self.path),))

    def __repr__(self) -> str:
        return f"ImageCache({str(self.path)!r}, n={len(self)}, size={self.size})"


@contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on ``lock_path`` (concurrent builders wait for each other)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): builders are not serialised
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)




def build_cache(
    table: pd.DataFrame,
    root: str | Path | None,
    size: int,
    cache_dir: str | Path,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> tuple[ImageCache, pd.DataFrame]:
    """Decode every image of ``table`` once into a memory-mapped N x S x S uint8 array.

    A cache with the same key (:func:`cache_key`) is opened as is; an interrupted build is
    resumed (rows already decoded are kept; unreadable ones are retried).

    Args:
        table: rows with ``image_id`` and ``path`` (relative to ``root``, or absolute); the
            canonical table usually.
        root: image root; None takes ``table.attrs["root"]`` (set by ``load_table``).
        size: output side S in pixels.
        cache_dir: where caches live.
        workers: decoding processes (default: the usable CPUs, at most 16; 1 decodes in-process).
        skip_bad: drop missing or corrupt images (counted in ``cache.info["dropped"]``)
            instead of raising.
        progress: show a progress bar on stderr.

    Returns:
        (cache, the table actually cached: ``table`` without the dropped rows, index reset,
        row i matching ``cache.images[i]``).

    Raises:
        MedaugError: empty table, missing root, or unreadable images without ``skip_bad``.
    """
    _require_columns(table)
    if size < 8:
        raise MedaugError(f"image cache size must be at least 8 pixels, got {size}")
    if len(table) == 0:
        raise MedaugError("the table to cache has no rows")
    cache_dir = Path(cache_dir)
    key = cache_key(table, size)
    final = cache_dir / key
    if (final / "meta.json").exists():
        return _reuse(final, table)

    if root is None:
        root = table.attrs.get("root")
        if root is None:
            raise MedaugError("no image root given and the table does not carry one")
    root = Path(root)
    if not root.is_dir():
        raise MedaugError(f"image root {root} does not exist or is not a directory")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / f"{key}.lock"):
        if not (final / "meta.json").exists():  # else another process finished it meanwhile
            _build(table, root, size, cache_dir, key, workers, skip_bad, progress)
    return _reuse(final, table)


def _reuse(final: Path, table: pd.DataFrame) -> tuple[ImageCache, pd.DataFrame]:
    """Open a finished cache; its table is the caller's rows that it holds (same key, so the
    same ids and paths), keeping the caller's dtypes and attrs."""
    cache = ImageCache.open(final)
    rows = np.load(final / "rows.npy")
    cache.table = table.iloc[rows].reset_index(drop=True)
    return cache, cache.table


def _open_partial(partial: Path, n: int, size: int) -> tuple[Path, np.ndarray]:
    """The partial array and row status, fresh or left by an interrupted build."""
    array_path, status_path = partial / "images.npy", partial / "status.npy"
    try:
        images = np.load(array_path, mmap_mode="r")
        status = np.load(status_path, mmap_mode="r+")
        if images.shape == (n, size, size) and status.shape == (n,):
            del images
            return array_path, status
    except (OSError, ValueError):
        pass
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    images = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=(n, size, size))
    del images
    status = np.lib.format.open_memmap(status_path, mode="w+", dtype=np.int8, shape=(n,))
    status[:] = TODO
    status.flush()
    return array_path, status


def _build(
    table: pd.DataFrame, root: Path, size: int, cache_dir: Path, key: str,
    workers: int | None, skip_bad: bool, progress: bool,
) -> None:
    from tqdm import tqdm

    start_time = time.perf_counter()
    n = len(table)
    partial = cache_dir / f"{key}.partial"
    array_path, status = _open_partial(partial, n, size)
    paths = [str(root / p) for p in table["path"].astype(str)]
    todo = np.flatnonzero(status != OK)  # not yet decoded, or bad last time (retry)
    workers = usable_cpus() if workers is None else max(1, int(workers))
    chunk = int(np.clip(math.ceil(len(todo) / (4 * workers)), 16, 256))
    # Contiguous runs of rows to decode, cut into chunks.
    tasks = []
    for run in np.split(todo, np.flatnonzero(np.diff(todo) != 1) + 1):
        for i in range(0, len(run), chunk):
            rows = run[i : i + chunk]
            tasks.append((str(array_path), int(rows[0]), paths[rows[0] : rows[-1] + 1], size))

    bar = tqdm(total=len(todo), desc="caching images", unit="img", disable=not progress)
    last_flush = time.monotonic()

    def record(start: int, chunk_status: np.ndarray) -> None:
        nonlocal last_flush
        status[start : start + len(chunk_status)] = chunk_status
        bar.update(len(chunk_status))
        if time.monotonic() - last_flush > 2.0:
            status.flush()
            last_flush = time.monotonic()

    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                record(*_decode_chunk(task))
        else:
            with pool_context().Pool(min(workers, len(tasks))) as pool:
                for result in pool.imap_unordered(_decode_chunk, tasks):
                    record(*result)
    finally:
        status.flush()
        bar.close()

    codes = np.array(status)
    bad = np.flatnonzero(codes != OK)
    missing, corrupt = int((codes == MISSING).sum()), int((codes == CORRUPT).sum())
    if len(bad) and not skip_bad:
        shown = [str(table["path"].iat[i]) for i in bad[:SHOWN_BAD]]
        raise MedaugError(
            f"{len(bad)} images could not be read (missing: {missing}, corrupt: {corrupt}) "
            f"under {root}, e.g. {shown}; use --skip-bad-images (data.skip_bad_images=true) "
            "to drop them"
        )
    if len(bad) == n:
        raise MedaugError(
            f"none of the {n} images could be read (missing: {missing}, corrupt: {corrupt}) "
            f"under {root}, e.g. {[str(p) for p in table['path'].head(SHOWN_BAD)]}"
        )
    keep = np.flatnonzero(codes == OK)
    if len(bad):
        _compact(partial, array_path, keep, size)
    kept = table.iloc[keep].reset_index(drop=True)
    kept.attrs = {}  # attrs need not be JSON-serialisable; the table is what matters
    kept.to_parquet(partial / "table.parquet", index=False)
    np.save(partial / "rows.npy", keep.astype(np.int64))
    info = {
        "version": CACHE_VERSION,
        "key": key,
        "size": size,
        "n": int(len(keep)),
        "n_input": n,
        "bytes": int(len(keep) * size * size),
        "root": str(root),
        "dropped": {"missing": missing, "corrupt": corrupt},
        "dropped_paths": [str(table["path"].iat[i]) for i in bad[:KEPT_BAD]],
        "build_seconds": round(time.perf_counter() - start_time, 2),
    }
    (partial / "status.npy").unlink()  # POSIX: fine while still mapped
    write_text_atomic(partial / "meta.json", json.dumps(info, indent=2) + "\n")
    final = cache_dir / key
    if final.exists():  # an unfinished leftover without meta.json
        shutil.rmtree(final)
    os.replace(partial, final)


def _compact(partial: Path, array_path: Path, keep: np.ndarray, size: int) -> None:
    """Rewrite the partial array with only the ``keep`` rows (in blocks, bounded memory)."""
    source = np.load(array_path, mmap_mode="r")
    tmp = partial / "images.kept.npy"
    target = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(keep), size, size))
    block = 1024
    for i in range(0, len(keep), block):
        target[i : i + block] = source[keep[i : i + block]]
    target.flush()
    del source, target
    os.replace(tmp, array_path)
