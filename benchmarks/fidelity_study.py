"""A fidelity study: configurations of a search space, each run to the end at several budgets, every epoch kept.

    python benchmarks/fidelity_study.py --space benchmarks/fidelity/cifar10k.yaml --configs 16 \\
        --fractions 1/9,1/3,1 --out benchmarks/results/<date>-fidelity-cifar10k

A run at budget B is the configuration with max_epochs = B: the Gompertz time scale and the learning-rate schedule
are compressed to B epochs (budget_halving's low-fidelity evaluation), and the full budget's run gives the whole
curve that ASHA's, Hyperband's and median stopping's rungs read. Each run's student is tested once, on the test
split, after its last epoch. Ray-free (plain PyTorch), so it also runs on a GPU machine without Ray.

Writes OUT/trials.parquet (one row per configuration, budget and epoch, in the report's trials.parquet columns plus
`config` and `budget`; `python -m gkd_tune.simulate --sweep OUT/trials.parquet` reads it) after every run, and
skips the runs it holds when started again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gkd_tune.core.data import load_splits  # noqa: E402
from gkd_tune.core.distillers import build_distiller  # noqa: E402
from gkd_tune.core.loop import COMPLETED, DIVERGED, Trainer, evaluation_loader  # noqa: E402
from gkd_tune.core.models import build_model  # noqa: E402
from gkd_tune.core.teacher import obtain_teacher  # noqa: E402
from gkd_tune.sweep.report import numeric, write_parquet  # noqa: E402
from gkd_tune.sweep.space import TrialPlan, load_space  # noqa: E402


def budgets(max_epochs: int, fractions: str) -> list[int]:
    """'1/9,1/3,1' of 27 -> [3, 9, 27] (at least one epoch each)."""
    return sorted({max(1, round(Fraction(f) * max_epochs)) for f in fractions.split(",")})


def sample_configs(spec, count: int, seed: int) -> list[dict]:
    """`count` draws of the space's searched parameters, as plain Python values."""
    rng = np.random.default_rng(seed)
    draws = {name: dist.sample(rng, count) for name, dist in spec.searched().items()}
    return [{name: values[i].item() if hasattr(values[i], "item") else values[i] for name, values in draws.items()}
            for i in range(count)]


def data_folder(train: Path, test: Path, folder: Path) -> str:
    """A parquet source whose train and test splits are the two files (linked by the names the source reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, file in (("train.parquet", train), ("test.parquet", test)):
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(file.resolve())
    return f"parquet:{folder}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, required=True, help="a search-space file (its params are sampled)")
    parser.add_argument("--configs", type=int, default=16)
    parser.add_argument("--fractions", default="1/9,1/3,1", help="budgets as shares of training.max_epochs")
    parser.add_argument("--seed", type=int, default=0, help="the configurations' draw")
    parser.add_argument("--train-file", type=Path, default=ROOT.parent / "shared/data/cifar10/train-10k.parquet")
    parser.add_argument("--test-file", type=Path, default=ROOT.parent / "shared/data/cifar10-full/test.parquet")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    spec = load_space(args.space)
    source = data_folder(args.train_file, args.test_file, args.out / "data")
    spec = replace(spec, data=replace(spec.data, source=source))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    splits = load_splits(spec.data.source, spec.data.val_fraction, image_size=spec.data.image_size)
    teacher, _, teacher_meta = obtain_teacher(splits, spec.teacher.arch, spec.teacher.recipe, spec.data.val_fraction)
    shutil.copy(args.space, args.out / "space.yaml")
    runs = budgets(spec.training.max_epochs, args.fractions)
    configs = sample_configs(spec, args.configs, args.seed)
    table = args.out / "trials.parquet"
    rows: list[dict] = []
    if table.exists():
        import pyarrow.parquet as pq
        rows = pq.read_table(table).to_pylist()
    done = {row["trial"] for row in rows}
    (args.out / "study.json").write_text(json.dumps({
        "command": "python benchmarks/fidelity_study.py " + " ".join(argv or sys.argv[1:]),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "budgets": runs, "configs": configs,
        "teacher": {"arch": spec.teacher.arch, "val_acc": teacher_meta.get("val_acc")}}, indent=1))
    started = time.time()
    for budget in runs:  # the cheap budgets first: a study cut short still holds every configuration at them
        for index, values in enumerate(configs, 1):
            config = f"c{index:02d}"
            name = f"{config}-b{budget}"
            if name in done:
                continue
            plan = TrialPlan.resolve(spec, values)
            train = replace(plan.train, epochs=budget)
            torch.manual_seed(train.seed)
            student = build_model(spec.student, splits.num_classes)
            trainer = Trainer(build_distiller(plan.distill, student, teacher), splits, train)
            trainer.run(lambda metrics, trainer: None)
            if not trainer.diverged:
                loader = evaluation_loader(splits.test, splits.channel_stats(), train.batch_size, trainer.device)
                test_loss, test_acc = trainer.evaluate(loader)
                trainer.history[-1].update(test_loss=test_loss, test_acc=test_acc)
            outcome = DIVERGED if trainer.diverged else COMPLETED
            params = {**replace(plan, train=train).params, **{f"sampled.{k}": v for k, v in values.items()}}
            for result in trainer.history:
                rows.append({"trial": name, "config": config, "budget": budget, "outcome": outcome,
                             **{f"param.{k}": str(v) for k, v in params.items()}, **numeric(result),
                             "test_acc": result.get("test_acc"), "test_loss": result.get("test_loss")})
            write_parquet(rows, table)
            last = trainer.history[-1]
            print(f"{name}: {outcome} val_acc {last['val_acc']:.4f} test_acc {last.get('test_acc', float('nan')):.4f}"
                  f"  ({time.time() - started:.0f}s so far)", flush=True)
    print(f"study: {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
