"""``medaug data``: make the phantom dataset, build an image cache, convert a metadata table.

    medaug data phantom OUT --patients N --image-size PX --seed S [--workers W] \
        [--style NAME_OR_MAPPING] [--style-set FIELD=VALUE ...]
    medaug data cache --dataset chexpert --csv PATH [--root DIR] [--image-size PX] ...
    medaug data table --dataset chexpert --csv PATH --out table.parquet
    medaug data table --dataset csv --csv PATH --map path=file patient_id=subject \
        projection=position --map-values projection:L=LATERAL --out table.parquet

None of these import torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from medaug.data.load import parse_column_map, parse_value_map
from medaug.errors import MedaugError

DEFAULT_CACHE_DIR = "runs/cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medaug.config import DataConfig
    from medaug.data.load import DATASETS

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    phantom = sub.add_parser(
        "phantom", help="generate the synthetic CheXpert-shaped dataset",
        description="Generate the phantom: synthetic chest X-rays in CheXpert's layout.",
    )
    phantom.add_argument("out", type=Path, help="target directory (new, empty, or a phantom)")
    phantom.add_argument("--patients", type=int, default=500, help="number of patients")
    phantom.add_argument("--image-size", type=int, default=128, help="shorter image side (px)")
    phantom.add_argument("--seed", type=int, default=0, help="dataset seed")
    phantom.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    phantom.add_argument("--quiet", action="store_true", help="no progress bar")
    phantom.add_argument(
        "--style", default=None, metavar="NAME_OR_MAPPING",
        help="the generative model's knobs: a named style (original) or an inline YAML / JSON "
        "mapping of PhantomStyle fields, e.g. '{study_stop: 0.2, effusion_mixing: 0.5}'",
    )
    phantom.add_argument(
        "--style-set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE",
        help="style fields set on top of --style (e.g. study_stop=0.2 views=[0.4,0.4,0.1,0.1])",
    )

    def table_source(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", choices=list(DATASETS), default="chexpert", help="table layout")
        p.add_argument("--csv", required=True, help="the dataset's main CSV")
        p.add_argument("--root", default=None, help="image root (default: found next to the CSV)")
        p.add_argument(
            "--map", nargs="+", action="extend", default=[], metavar="CANONICAL=COLUMN",
            help="column names of a generic CSV (e.g. patient_id=subject)",
        )
        p.add_argument(
            "--map-values", nargs="+", action="extend", default=[],
            metavar="COLUMN:RAW=CANONICAL,...",
            help="what a generic CSV's view / projection values stand for "
            "(e.g. projection:L=LATERAL,AP_horizontal=AP,COSTAL=other)",
        )
        p.add_argument(
            "--train-only", action="store_true",
            help="CheXpert: read only the given CSV, not valid.csv and test.csv beside it",
        )

    cache = sub.add_parser(
        "cache", help="decode and resize every image once into a memory-mapped array",
        description="Build (or reuse) the image cache of a dataset.",
    )
    table_source(cache)
    cache.add_argument(
        "--image-size", type=int, default=DataConfig().image_size, help="cache resolution (px)"
    )
    cache.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="where caches live")
    cache.add_argument(
        "--skip-bad-images", action="store_true", help="drop missing or corrupt images"
    )
    cache.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    cache.add_argument("--quiet", action="store_true", help="no progress bar")

    table = sub.add_parser(
        "table", help="write a dataset's canonical metadata table as parquet",
        description="Convert a dataset's metadata into the canonical table (parquet).",
    )
    table_source(table)
    table.add_argument("--out", required=True, type=Path, help="the parquet file to write")


def run(args: argparse.Namespace) -> int:
    return {"phantom": _phantom, "cache": _cache, "table": _table}[args.action](args)


def _load(args: argparse.Namespace):
    from medaug.data.load import load_table

    table = load_table(
        args.dataset, args.csv, root=args.root, column_map=parse_column_map(args.map) or None,
        include_siblings=not args.train_only, value_map=parse_value_map(args.map_values) or None,
    )
    for note in table.attrs.get("notes", []):  # what the adapter left out
        print(f"note: {note}", file=sys.stderr)
    return table


def phantom_summary(summary: dict) -> str:
    """The per-split table printed after generating a phantom."""
    splits = list(summary["images"])
    lines = [f"{'split':<6} {'patients':>8} {'studies':>8} {'images':>7} {'frontal':>8} "
             f"{'lateral':>8} {'effusion+':>10}"]
    for s in splits + ["total"]:
        def get(k: str, s: str = s) -> int:
            return sum(summary[k].values()) if s == "total" else summary[k][s]

        if s == "total":
            images = max(get("images"), 1)
            prev = sum(summary["effusion_prevalence"][x] * summary["images"][x] for x in splits)
            prev /= images
        else:
            prev = summary["effusion_prevalence"][s]
        lines.append(
            f"{s:<6} {get('patients'):>8} {get('studies'):>8} {get('images'):>7} "
            f"{get('frontal'):>8} {get('lateral'):>8} {100 * prev:>9.1f}%"
        )
    return "\n".join(lines)


def phantom_style(text: str | None, assignments: list[str]):
    """The :class:`PhantomStyle` of ``--style`` (a name in ``STYLES`` or an inline YAML / JSON
    mapping of its fields; default the original) with ``--style-set FIELD=VALUE`` assignments
    (values read as YAML: numbers, lists) on top.

    Raises:
        MedaugError: malformed text, unknown names or fields, values out of range.
    """
    import yaml

    from medaug.data.phantom import resolve_style

    fields: dict = {}
    if text is not None:
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as err:
            first = str(err).strip().splitlines()[0]
            raise MedaugError(
                f"--style {text!r} is not a name or a YAML mapping: {first}"
            ) from None
        if not isinstance(spec, (str, dict)):
            raise MedaugError(
                f"--style must be a style name or a mapping of its fields, got {text!r}"
            )
        fields = resolve_style(spec).to_dict()
    for item in assignments:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise MedaugError(f"--style-set {item!r} must look like FIELD=VALUE")
        try:
            fields[name.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            fields[name.strip()] = raw  # refused as "not a number" by the style's own checks
    return resolve_style(fields)


def _phantom(args: argparse.Namespace) -> int:
    from medaug.data.phantom import DEFAULT_STYLE, make_phantom

    style = phantom_style(args.style, args.style_set)
    summary = make_phantom(
        args.out, args.patients, image_size=args.image_size, seed=args.seed,
        workers=args.workers, progress=not args.quiet, style=style,
    )
    print(f"phantom dataset in {args.out} ({summary['seconds']:.1f} s)")
    if style != DEFAULT_STYLE:
        default = DEFAULT_STYLE.to_dict()
        changed = [f"{k}={v}" for k, v in style.to_dict().items() if v != default[k]]
        print(f"style: {', '.join(changed)}")
    print(phantom_summary(summary))
    print("(effusion+: share of images labelled positive; valid/test labels are clean 0/1)")
    csv = shlex.quote(str(Path(args.out) / "train.csv"))
    print(f"next: medaug data cache --dataset chexpert --csv {csv}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from medaug.data.cache import build_cache

    table = _load(args)
    cache, kept = build_cache(
        table, table.attrs["root"], args.image_size, args.cache_dir, workers=args.workers,
        skip_bad=args.skip_bad_images, progress=not args.quiet,
    )
    info = cache.info
    dropped = info["dropped"]
    print(f"image cache: {cache.path}")
    print(f"  images {len(cache)} x {cache.size} x {cache.size} uint8 = "
          f"{_human(info['bytes'])} ({info['bytes']} bytes)")
    print(f"  dropped {dropped['missing'] + dropped['corrupt']} "
          f"(missing: {dropped['missing']}, corrupt: {dropped['corrupt']}) of {info['n_input']}")
    for path in info["dropped_paths"][:5]:
        print(f"    {path}")
    return 0


def _table(args: argparse.Namespace) -> int:
    from medaug.data.schema import write_table

    table = _load(args)
    path = write_table(table, args.out)
    counts = table["split"].value_counts().to_dict()
    print(f"wrote {len(table)} rows ({table['patient_id'].nunique()} patients, "
          f"{table['study_id'].nunique()} studies; "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f") to {path}")
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"
