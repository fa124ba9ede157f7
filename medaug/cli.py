"""The ``medaug`` command.

Each subcommand lives in ``medaug/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; only the chosen one is imported, so metadata-only commands such as
``medaug pairs`` start without loading torch or Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medaug.errors import MedaugError

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("medaug.commands.data", "make the phantom dataset, build image caches, convert tables"),
    "pairs": ("medaug.commands.pairs", "positive-pair statistics of a criterion (metadata only)"),
    "pretrain": ("medaug.commands.pretrain", "one MoCo v2 pretraining job on Ray Train"),
    "evaluate": ("medaug.commands.evaluate", "nested label-scarce evaluation of a checkpoint"),
    "sweep": ("medaug.commands.sweep", "a Ray Tune sweep of pretraining choices, tracked in MLflow"),
    "report": ("medaug.commands.report", "the paper-style results table of a sweep"),
    "demo": ("medaug.commands.demo", "the demo sweep on the bundled phantom data"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: medaug COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "medaug COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from medaug import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"medaug: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"medaug {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except MedaugError as err:
        print(f"medaug {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medaug {name}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``medaug`` command."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
