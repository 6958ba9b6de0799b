"""Train a teacher (or find it in the cache) and print where it lives and its validation accuracy.

    python -m gkd_tune.teacher --dataset digits --arch resnet20 --epochs 15
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import run_command, shared_options
from .core.data import DataSpec, load_splits
from .core.loop import TrainConfig
from .core.models import MODELS, REFERENCE_FORMS, model_name
from .core.params import add_flags, from_flags, settings
from .core.teacher import TeacherRecipe, obtain_teacher


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.teacher", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     parents=[shared_options(without_address=None, sweep=False)])
    parser.add_argument("--arch", required=True, type=model_name, metavar="ARCH",
                        help=f"one of: {', '.join(MODELS)}, or {REFERENCE_FORMS}")
    parser.add_argument("--cache-dir", type=Path, help="where teachers are cached (default $GKD_TUNE_CACHE/teachers)")
    compile_mode = next(s for s in settings(TrainConfig) if s.name == "compile")  # how it runs, not its recipe
    parser.add_argument("--compile", choices=compile_mode.param.choices, default=compile_mode.default,
                        help=compile_mode.param.help)
    add_flags(parser.add_argument_group("data"), DataSpec)
    add_flags(parser.add_argument_group("recipe"), TeacherRecipe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def teacher() -> int:
        data, recipe = from_flags(args, DataSpec), from_flags(args, TeacherRecipe)
        splits = load_splits(data.source, data.val_fraction, image_size=data.image_size)
        _, path, metadata = obtain_teacher(splits, args.arch, recipe, data.val_fraction, directory=args.cache_dir,
                                           compile=args.compile)
        print(f"teacher {args.arch} on {data.source}: val acc {metadata['val_acc']:.4f}\n{path}")
        return 0

    return run_command(teacher, args.debug)

if __name__ == "__main__":
    sys.exit(main())
