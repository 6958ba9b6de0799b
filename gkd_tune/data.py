"""python -m gkd_tune.data describe SOURCE: split sizes, class counts and the cache file of a data source."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .cli import run_command, shared_options
from .core.data.sources import SOURCE_KINDS
from .core.data.splits import load_splits


def describe(source: str, val_fraction: float, seed: int) -> str:
    splits = load_splits(source, val_fraction, seed)
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}

    def counts(arrays):
        if arrays is None:
            return ["-"] * splits.num_classes
        return [str(c) for c in np.bincount(arrays.labels, minlength=splits.num_classes)]

    columns = {name: counts(arrays) for name, arrays in parts.items()}
    sizes = "  ".join(f"{name} {len(a) if a is not None else '-'}" for name, a in parts.items())
    width = max(len(n) for n in splits.class_names + ("class",))
    lines = [
        f"source     {source}",
        f"cache      {splits.cache_path}",
        f"classes    {splits.num_classes}",
        f"images     {sizes}  (validation: stratified {val_fraction:.0%} of train, seed {seed})",
        "",
        f"{'class':<{width}}  {'train':>6}  {'val':>6}  {'test':>6}",
    ]
    for i, name in enumerate(splits.class_names):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{columns[p][i]:>6}" for p in parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.data", description="Inspect a data source.")
    commands = parser.add_subparsers(dest="command", required=True)
    describe_parser = commands.add_parser(
        "describe", help="print split sizes, class counts and the cache location of a source",
        parents=[shared_options(without_address=None, sweep=False)])
    describe_parser.add_argument("source", help=f"one of: {', '.join(SOURCE_KINDS)}")
    describe_parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share (default 0.1)")
    describe_parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    args = parser.parse_args(argv)

    def described() -> int:
        print(describe(args.source, args.val_fraction, args.seed))
        return 0

    return run_command(described, args.debug)


if __name__ == "__main__":
    sys.exit(main())
