"""The image cache: pixels against torchvision's Resize + CenterCrop, keys, reuse, bad images,
crash safety and resuming, the ``medaug data cache`` / ``table`` commands."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from torchvision import transforms

from medaug.cli import main
from medaug.data import phantom
from medaug.data.cache import ImageCache, build_cache, cache_key, load_image
from medaug.data.load import load_table
from medaug.data.schema import read_table
from medaug.errors import MedaugError

S = 24
# (width, height, mode, format): portrait, landscape, square, already S, colour, PNG.
SHAPES = [
    (40, 52, "L", "JPEG"),
    (61, 37, "L", "JPEG"),
    (30, 30, "L", "PNG"),
    (S, 33, "L", "PNG"),
    (50, 45, "RGB", "JPEG"),
    (27, 90, "RGB", "PNG"),
    (S, S, "L", "PNG"),
    (70, 71, "L", "JPEG"),
]


def reference(path, size: int = S) -> np.ndarray:
    """torchvision's Resize(size) + CenterCrop(size) on the greyscale PIL image."""
    pipeline = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])
    with Image.open(path) as im:
        return np.asarray(pipeline(im.convert("L")))


def write_images(root, n: int, seed: int = 0) -> pd.DataFrame:
    """n random images (cycling through SHAPES) under root/img; their table."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        w, h, mode, fmt = SHAPES[i % len(SHAPES)]
        # Smooth structure plus noise, so resizing has something to average.
        yy, xx = np.mgrid[0:h, 0:w]
        base = 128 + 60 * np.sin(xx / (3 + i % 5)) * np.cos(yy / (4 + i % 3))
        pixels = np.clip(base + rng.normal(0, 25, (h, w)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if mode == "RGB":
            image = Image.merge("RGB", (image, image.point(lambda v: 255 - v), image))
        rel = f"img/{i // 5}/im{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / rel, format=fmt)
        rows.append({"image_id": f"id{i:03d}", "path": rel, "label": float(i % 2)})
    return pd.DataFrame(rows)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "data"
    return root, write_images(root, 21)


def test_cached_pixels_equal_torchvision_resize_and_centre_crop(images, tmp_path):
    root, table = images
    cache, kept = build_cache(table, root, S, tmp_path / "cache", workers=1, progress=False)
    assert len(cache) == len(table) and cache.images.shape == (len(table), S, S)
    assert cache.images.dtype == np.uint8
    pd.testing.assert_frame_equal(kept, table)
    for i, rel in enumerate(table["path"]):
        np.testing.assert_array_equal(cache[i], reference(root / rel), err_msg=rel)


def test_parallel_build_equals_serial_build(images, tmp_path):
    root, table = images
    serial, _ = build_cache(table, root, S, tmp_path / "c1", workers=1, progress=False)
    parallel, _ = build_cache(table, root, S, tmp_path / "c2", workers=2, progress=False)
    np.testing.assert_array_equal(np.asarray(serial.images), np.asarray(parallel.images))


def test_large_jpegs_decoded_at_reduced_scale_stay_close(tmp_path):
    # A 128 px phantom film cached at 16 px: the decoder's DCT scaling kicks in (>= 4x).
    rng = phantom._patient_rng(0, 0)
    p = phantom._sample_patient(rng)
    study = phantom._sample_studies(rng, p)[0]
    pixels = phantom.render_frontal(p, study, "PA", 128, 150, 128, rng)
    Image.fromarray(pixels).save(tmp_path / "film.jpg", quality=90)
    ours = load_image(tmp_path / "film.jpg", 16).astype(np.int16)
    ref = reference(tmp_path / "film.jpg", 16).astype(np.int16)
    assert np.abs(ours - ref).mean() < 2.0 and np.abs(ours - ref).max() < 16


def stretched(values: np.ndarray) -> np.ndarray:
    """Min-max stretch onto 0..255, rounding half up, in floating point (the reference)."""
    v = values.astype(np.float64)
    lo, hi = v.min(), v.max()
    return np.floor((v - lo) * 255.0 / (hi - lo) + 0.5).astype(np.uint8)


def write_png16(path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint16)).save(path)
    with Image.open(path) as im:  # the file really is 16-bit greyscale
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im), values)


def test_16_bit_png_is_stretched_from_its_own_range(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.integers(300, 52_001, size=(S, S))
    values[0, 0], values[-1, -1] = 300, 52_000  # the known range
    write_png16(tmp_path / "film.png", values)
    expected = stretched(values)
    # Hand-checked corners of the range: 300 -> 0, 52000 -> 255, and one value between.
    assert expected[0, 0] == 0 and expected[-1, -1] == 255
    v = int(values[3, 5])
    assert expected[3, 5] == int((v - 300) * 255 / 51_700 + 0.5)
    np.testing.assert_array_equal(load_image(tmp_path / "film.png", S), expected)  # no resize
    # Resized: the stretch comes first, then torchvision's Resize + CenterCrop.
    tall = rng.integers(1_000, 9_001, size=(57, 40))
    write_png16(tmp_path / "tall.png", tall)
    pipeline = transforms.Compose([transforms.Resize(S), transforms.CenterCrop(S)])
    ref = np.asarray(pipeline(Image.fromarray(stretched(tall))))
    np.testing.assert_array_equal(load_image(tmp_path / "tall.png", S), ref)


def test_12_bit_data_in_a_16_bit_png_uses_the_full_8_bit_range(tmp_path):
    # A film as PadChest stores it: 12-bit values (here 40..4000) in a 16-bit PNG.
    yy, xx = np.mgrid[0:S, 0:S]
    values = (40 + (4000 - 40) * (xx + S * yy) / (S * S - 1)).round().astype(np.int64)
    write_png16(tmp_path / "film.png", values)
    with Image.open(tmp_path / "film.png") as im:
        clipped = np.asarray(im.convert("L"))
    assert (clipped == 255).mean() > 0.9  # what plain convert("L") makes of it: nearly white
    ours = load_image(tmp_path / "film.png", S)
    assert ours.min() == 0 and ours.max() == 255
    assert len(np.unique(ours)) == 256  # S * S = 576 graded values reach every grey level
    np.testing.assert_array_equal(ours, stretched(values))
    # Monotone: a brighter pixel in the file is never darker in the cache.
    order = np.argsort(values, axis=None, kind="stable")
    assert (np.diff(ours.ravel()[order].astype(int)) >= 0).all()


@pytest.mark.parametrize(
    "mode, values",
    [
        ("I", [[-1_000, 0, 70_000], [2**31 - 1, -(2**31), 5]]),  # 32-bit signed, full span
        ("I", [[10, 11, 12], [13, 14, 15]]),  # wide mode, narrow values: still stretched
        ("I;16B", [[1_000, 4_095, 2_000], [1_500, 3_000, 1_001]]),  # big-endian 16-bit
    ],
)
def test_wide_integer_modes_are_stretched(mode, values):
    from medaug.data.cache import to_grey8

    values = np.array(values, dtype=np.int64)
    if mode == "I":
        image = Image.fromarray(values.astype(np.int32))
    else:
        image = Image.frombytes(mode, values.shape[::-1], values.astype(">u2").tobytes())
    assert image.mode == mode
    out = to_grey8(image)
    assert out.mode == "L" and out.size == image.size
    np.testing.assert_array_equal(np.asarray(out), stretched(values))


def test_constant_16_bit_image_becomes_black(tmp_path):
    write_png16(tmp_path / "flat.png", np.full((S, S), 1234))
    np.testing.assert_array_equal(load_image(tmp_path / "flat.png", S), np.zeros((S, S), np.uint8))


@pytest.mark.parametrize("mode", ["L", "P", "LA", "RGB", "RGBA", "1"])
def test_8_bit_images_are_not_stretched(mode, tmp_path):
    # Narrow-range pixels (50..120): a stretch would spread them over 0..255.
    rng = np.random.default_rng(5)
    grey = rng.integers(50, 121, size=(S, S)).astype(np.uint8)
    if mode == "L":
        image = Image.fromarray(grey)
    elif mode == "RGB":
        image = Image.merge("RGB", (Image.fromarray(grey), Image.fromarray(grey + 10),
                                    Image.fromarray(grey - 20)))
    else:
        image = Image.fromarray(grey).convert(mode)
    image.save(tmp_path / "im.png")
    with Image.open(tmp_path / "im.png") as im:
        assert im.mode == mode
        expected = np.asarray(im.convert("L"))
    ours = load_image(tmp_path / "im.png", S)
    np.testing.assert_array_equal(ours, expected)
    if mode in ("L", "P", "LA"):
        np.testing.assert_array_equal(ours, grey)  # byte for byte the stored grey levels
    elif mode == "RGB":  # ITU-R 601 luma, computed by hand
        r = grey.astype(np.int64)
        g, b = r + 10, r - 20
        luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
        np.testing.assert_array_equal(ours, luma)
    if mode != "1":
        assert ours.max() < 255


def test_cache_holds_stretched_16_bit_films(images, tmp_path):
    root, table = images
    values = np.random.default_rng(7).integers(100, 3_901, size=(30, S))
    write_png16(root / "img" / "film16.png", values)
    extra = pd.DataFrame([{"image_id": "id16", "path": "img/film16.png", "label": 0.0}])
    table = pd.concat([table, extra], ignore_index=True)
    cache, _ = build_cache(table, root, S, tmp_path / "cache", workers=1, progress=False)
    pipeline = transforms.Compose([transforms.Resize(S), transforms.CenterCrop(S)])
    np.testing.assert_array_equal(cache[len(table) - 1],
                                  np.asarray(pipeline(Image.fromarray(stretched(values)))))
    for i, rel in enumerate(table["path"].iloc[:-1]):  # the 8-bit images as before
        np.testing.assert_array_equal(cache[i], reference(root / rel), err_msg=rel)


def test_indexing_and_pickling(images, tmp_path):
    root, table = images
    cache, _ = build_cache(table, root, S, tmp_path / "cache", workers=1, progress=False)
    full = np.asarray(cache.images)
    idx = [7, 2, 7, 0, 20]
    np.testing.assert_array_equal(cache[idx], full[idx])
    np.testing.assert_array_equal(cache[np.array(idx)], full[idx])
    np.testing.assert_array_equal(cache[3:6], full[3:6])
    np.testing.assert_array_equal(cache[4], full[4])
    batch = cache[idx]
    batch[0] = 0  # a copy, not a view of the read-only map
    assert cache[7].any()
    blob = pickle.dumps(cache)
    assert len(blob) < 1000  # the directory travels, not the pixels
    again = pickle.loads(blob)
    np.testing.assert_array_equal(np.asarray(again.images), full)
    assert len(again) == len(cache) and again.size == S


def test_key_depends_on_ids_paths_order_and_size_only(images):
    _, table = images
    key = cache_key(table, S)
    assert key == cache_key(table.copy(), S)
    assert key != cache_key(table, S + 1)
    assert key != cache_key(table.iloc[::-1].reset_index(drop=True), S)
    assert key != cache_key(table.iloc[:-1], S)
    moved = table.copy()
    moved.loc[3, "path"] = "elsewhere/im003.jpg"
    assert key != cache_key(moved, S)
    renamed = table.copy()
    renamed.loc[3, "image_id"] = "other"
    assert key != cache_key(renamed, S)
    relabelled = table.copy()
    relabelled["label"] = 1.0 - relabelled["label"]
    assert key == cache_key(relabelled, S)  # labels do not touch pixels


def test_second_call_reuses_the_cache(images, tmp_path):
    root, table = images
    first, _ = build_cache(table, root, S, tmp_path / "cache", workers=1, progress=False)
    stamp = (first.path / "images.npy").stat().st_mtime_ns
    # Reuse must not even look at the images: remove them all.
    for rel in table["path"]:
        (root / rel).unlink()
    second, kept = build_cache(table, root, S, tmp_path / "cache", workers=1, progress=False)
    assert second.path == first.path
    assert (second.path / "images.npy").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(np.asarray(second.images), np.asarray(first.images))
    pd.testing.assert_frame_equal(kept, table)
    # Another size is another cache (and now the images are gone).
    with pytest.raises(MedaugError, match="could not be read"):
        build_cache(table, root, S + 2, tmp_path / "cache", workers=1, progress=False)


def _break(root, table) -> list[str]:
    """Delete two images and corrupt one; returns their paths in table order."""
    missing = [table["path"].iat[4], table["path"].iat[9]]
    corrupt = table["path"].iat[6]
    for rel in missing:
        (root / rel).unlink()
    data = (root / corrupt).read_bytes()
    (root / corrupt).write_bytes(data[: len(data) // 3])  # truncated
    return sorted([*missing, corrupt], key=lambda p: list(table["path"]).index(p))


def test_bad_images_raise_a_counted_error_by_default(images, tmp_path):
    root, table = images
    bad = _break(root, table)
    with pytest.raises(MedaugError) as err:
        build_cache(table, root, S, tmp_path / "cache", workers=1, progress=False)
    message = str(err.value)
    assert "3 images could not be read (missing: 2, corrupt: 1)" in message
    assert bad[0] in message and "--skip-bad-images" in message
    assert "\n" not in message
    # Nothing that looks like a finished cache was left behind.
    final = tmp_path / "cache" / cache_key(table, S)
    assert not (final / "meta.json").exists()
    with pytest.raises(MedaugError, match="not a finished image cache"):
        ImageCache.open(final)


def test_skip_bad_drops_and_counts_them_keeping_rows_aligned(images, tmp_path):
    root, table = images
    bad = _break(root, table)
    cache, kept = build_cache(
        table, root, S, tmp_path / "cache", workers=2, skip_bad=True, progress=False
    )
    assert len(cache) == len(kept) == len(table) - 3
    assert cache.info["dropped"] == {"missing": 2, "corrupt": 1}
    assert cache.info["dropped_paths"] == bad
    assert not set(bad) & set(kept["path"])
    assert list(kept.index) == list(range(len(kept)))
    for i, rel in enumerate(kept["path"]):
        np.testing.assert_array_equal(cache[i], reference(root / rel), err_msg=rel)
    # Reopened standalone, the cache carries the same rows.
    reopened = ImageCache.open(cache.path)
    assert list(reopened.table["path"]) == list(kept["path"])


def test_an_interrupted_build_is_resumed_not_redone(images, tmp_path):
    root, table = images
    bad = _break(root, table)
    with pytest.raises(MedaugError):
        build_cache(table, root, S, tmp_path / "cache", workers=1, progress=False)
    # Repair the bad files, and change a good one behind the cache's back: a resumed build
    # keeps the rows it already decoded and decodes only the rows that failed.
    for rel in bad:
        Image.fromarray(np.full((30, 30), 200, np.uint8)).save(root / rel, format="PNG")
    changed = table["path"].iat[0]
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(root / changed, format="PNG")
    cache, kept = build_cache(table, root, S, tmp_path / "cache", workers=1, progress=False)
    assert len(cache) == len(table) and cache.info["dropped"] == {"missing": 0, "corrupt": 0}
    for rel in bad:
        np.testing.assert_array_equal(cache[list(table["path"]).index(rel)], np.full((S, S), 200))
    assert cache[0].any()  # the old pixels of row 0, not the new black image
    assert not (tmp_path / "cache" / f"{cache_key(table, S)}.partial").exists()


def test_user_mistakes_are_one_line_errors(images, tmp_path):
    root, table = images
    with pytest.raises(MedaugError, match="image root .*nowhere does not exist"):
        build_cache(table, tmp_path / "nowhere", S, tmp_path / "cache", progress=False)
    with pytest.raises(MedaugError, match="no rows"):
        build_cache(table.iloc[:0], root, S, tmp_path / "cache", progress=False)
    with pytest.raises(MedaugError, match="lacks column.*path"):
        build_cache(table.drop(columns="path"), root, S, tmp_path / "cache", progress=False)
    with pytest.raises(MedaugError, match="at least 8"):
        build_cache(table, root, 4, tmp_path / "cache", progress=False)
    with pytest.raises(MedaugError, match="no image root"):
        build_cache(table, None, S, tmp_path / "cache", progress=False)
    for rel in table["path"]:
        (root / rel).unlink()
    with pytest.raises(MedaugError, match="21 images could not be read"):
        build_cache(table, root, S, tmp_path / "cache", workers=1, progress=False)
    with pytest.raises(MedaugError, match="none of the 21 images"):
        build_cache(table, root, S, tmp_path / "cache", workers=1, skip_bad=True, progress=False)


# ---------------------------------------------------------------------------------------------
# With the phantom and the adapters; the commands


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache_phantom") / "data"
    phantom.make_phantom(out, 8, image_size=32, seed=0, workers=1, progress=False)
    return out


def test_canonical_table_round_trip(small_phantom, tmp_path):
    table = load_table("chexpert", small_phantom / "train.csv", include_siblings=True)
    cache, kept = build_cache(table, None, 16, tmp_path / "cache", workers=1, progress=False)
    assert kept.attrs["root"] == table.attrs["root"]  # the caller's table, attrs and all
    pd.testing.assert_frame_equal(ImageCache.open(cache.path).table, kept)
    for i in (0, len(kept) - 1):
        np.testing.assert_array_equal(cache[i], reference(small_phantom / kept["path"].iat[i], 16))


def test_cache_command(small_phantom, tmp_path, capsys):
    base = ["data", "cache", "--dataset", "chexpert", "--csv", str(small_phantom / "train.csv"),
            "--cache-dir", str(tmp_path / "c"), "--workers", "1", "--quiet"]
    argv = base + ["--image-size", "16"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    n = sum(1 for s in ("train", "valid", "test")
            for _ in open(small_phantom / f"{s}.csv").readlines()[1:])
    assert f"images {n} x 16 x 16 uint8" in text and "dropped 0" in text
    key_dir = next(p for p in (tmp_path / "c").iterdir() if p.is_dir())
    assert str(key_dir) in text
    assert main(argv + ["--train-only"]) == 0
    train_n = len(open(small_phantom / "train.csv").readlines()) - 1
    assert f"images {train_n} x 16" in capsys.readouterr().out
    moved = small_phantom / pd.read_csv(small_phantom / "valid.csv")["Path"].iat[0]
    moved.rename(tmp_path / "x")
    try:
        assert main(base + ["--image-size", "12"]) == 2
        assert "1 images could not be read (missing: 1, corrupt: 0)" in capsys.readouterr().err
        assert main(base + ["--image-size", "12", "--skip-bad-images"]) == 0
        assert "dropped 1 (missing: 1, corrupt: 0)" in capsys.readouterr().out
    finally:
        (tmp_path / "x").rename(moved)
    assert main(["data", "cache", "--csv", str(small_phantom / "train.csv"), "--map", "x"]) == 2
    assert "canonical=column" in capsys.readouterr().err


def test_table_command(small_phantom, tmp_path, capsys):
    out = tmp_path / "t.parquet"
    assert main(["data", "table", "--csv", str(small_phantom / "train.csv"), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    table = read_table(out)
    expected = load_table("chexpert", small_phantom / "train.csv", include_siblings=True)
    pd.testing.assert_frame_equal(table, expected)
    assert main(["data", "table", "--csv", str(tmp_path / "none.csv"), "--out", str(out)]) == 2
