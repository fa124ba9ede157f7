"""``medaug pairs``: statistics of a positive-pair criterion on a dataset's metadata.

Metadata only: this command never imports torch, Ray or MLflow (matplotlib only for --plot).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medaug.data.load import DATASETS, parse_column_map, parse_value_map
from medaug.errors import MedaugError
from medaug.files import write_json_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medaug.pairs.criteria import list_criteria

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset", choices=list(DATASETS), default="chexpert", help="table layout"
    )
    data.add_argument("--csv", required=True, help="the dataset's main CSV (all rows are used)")
    data.add_argument(
        "--map",
        nargs="+",
        action="extend",
        default=[],
        metavar="CANONICAL=COLUMN",
        help="column names of a generic CSV (e.g. patient_id=subject)",
    )
    data.add_argument(
        "--map-values",
        nargs="+",
        action="extend",
        default=[],
        metavar="COLUMN:RAW=CANONICAL,...",
        help="what a generic CSV's view / projection values stand for "
        "(e.g. projection:L=LATERAL,AP_horizontal=AP,COSTAL=other)",
    )
    pairs = parser.add_argument_group("pairs")
    which = pairs.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--criterion", help=f"a named criterion, one of: {', '.join(list_criteria())}"
    )
    which.add_argument(
        "--criterion-yaml",
        metavar="TEXT_OR_FILE",
        help="a declarative criterion, inline or in a YAML file, e.g. "
        "'{same: [patient_id, study_id], distinct: [view], max_partners: 2}'",
    )
    pairs.add_argument(
        "--distinct-only", action="store_true", help="remove x from its set; skip empty anchors"
    )
    pairs.add_argument(
        "--size-match", default=None, metavar="NAME", help="cut sets to this criterion's sizes"
    )
    pairs.add_argument(
        "--anchors-with",
        default=None,
        metavar="NAME",
        help="keep only anchors with a partner other than themselves under this criterion",
    )
    pairs.add_argument(
        "--label", default=None, metavar="OBSERVATION", help="e.g. 'Pleural Effusion'"
    )
    pairs.add_argument("--uncertain", choices=("ignore", "zeros", "ones"), default="ignore")
    pairs.add_argument(
        "--seed", type=int, default=0, help="seed of the size-matching pre-selection"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", default=None, metavar="OUT", help="write the statistics as JSON")
    out.add_argument("--plot", default=None, metavar="OUT.png", help="write the figure")


def summary(stats: dict) -> str:
    """A few human-readable lines about a :func:`medaug.pairs.pair_stats` dict."""
    n = max(stats["n_anchors"], 1)
    opts = []
    if stats["distinct_only"]:
        opts.append("distinct images only")
    if stats["size_match"]:
        opts.append(f"size-matched to {stats['size_match']}")
    if stats.get("anchors_with"):
        opts.append(f"anchors with a partner under {stats['anchors_with']}")
    lines = [
        f"criterion {stats['criterion']}"
        + (f" ({', '.join(opts)})" if opts else "")
        + f" on {stats['n_images']} images, {stats['n_patients']} patients, "
        f"{stats['n_studies']} studies",
        f"anchors {stats['n_anchors']} (skipped {stats['n_skipped']}"
        + (
            f", of which {stats['n_restricted']} without a partner under {stats['anchors_with']}"
            if stats.get("anchors_with")
            else ""
        )
        + "); "
        f"fallback to the image itself {stats['n_fallback']} ({100 * stats['n_fallback'] / n:.1f}%); "
        f"with another image {stats['n_with_other']} ({100 * stats['n_with_other'] / n:.1f}%)",
        f"set size: mean {stats['mean_set_size']:.3f}, max {stats['max_set_size']}",
    ]
    dis = stats.get("label_disagreement")
    if dis is not None:
        if dis["n_anchors"]:
            lines.append(
                f"label disagreement ({dis['observation']}, uncertain={dis['uncertain']}) over "
                f"{dis['n_anchors']} anchors: mean {dis['mean']:.4f}, all different "
                f"{100 * dis['share_all_different']:.2f}%"
            )
        else:
            lines.append(f"label disagreement ({dis['observation']}): no anchor has a set")
    return "\n".join(lines)




def read_criterion_yaml(text: str) -> object:
    """The criterion of ``--criterion-yaml``: the YAML of a file when ``text`` names one,
    else ``text`` itself read as YAML (a mapping, or a criterion name)."""
    import yaml

    path = Path(text)
    source = "--criterion-yaml"
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise MedaugError(f"--criterion-yaml: file {path} does not exist")
        text, source = path.read_text(), f"--criterion-yaml {path}"
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise MedaugError(f"{source} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(spec, (dict, str)):
        raise MedaugError(f"{source} must hold a criterion mapping (or name), got {spec!r}")
    return spec


def run(args: argparse.Namespace) -> int:
    from medaug.data.schema import check_observation
    from medaug.pairs.criteria import check_criterion, check_criterion_setting, get_criterion

    if args.criterion_yaml is not None:
        criterion = check_criterion_setting(
            read_criterion_yaml(args.criterion_yaml), "--criterion-yaml"
        )
    else:
        criterion = get_criterion(args.criterion)
    for name in (args.size_match, args.anchors_with):
        if name is not None:
            check_criterion(name)
    if args.label is not None:
        check_observation(args.label)
    column_map = parse_column_map(args.map)
    value_map = parse_value_map(args.map_values)
    csv = Path(args.csv)
    if not csv.exists():
        raise MedaugError(f"CSV file {csv} does not exist")

    from medaug.data.load import load_table
    from medaug.pairs.index import build_pair_index
    from medaug.pairs.stats import pair_stats

    table = load_table(args.dataset, csv, column_map=column_map, value_map=value_map or None)
    for note in table.attrs.get("notes", []):  # what the adapter left out
        print(f"note: {note}", file=sys.stderr)
    index = build_pair_index(
        table,
        criterion,
        distinct_only=args.distinct_only,
        size_match=args.size_match,
        anchors_with=args.anchors_with,
        label=args.label,
        uncertain=args.uncertain,
        seed=args.seed,
    )
    stats = pair_stats(table, index, label=args.label, uncertain=args.uncertain)
    print(summary(stats), flush=True)
    if args.json:
        write_json_atomic(Path(args.json), stats, default=None)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        from medaug.pairs.plot import plot_pair_stats

        plot_pair_stats(stats, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
