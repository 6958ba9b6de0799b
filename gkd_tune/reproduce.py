"""Reproduce the paper's Table 2: teacher, student alone, KD and Gompertz for each teacher/student pair, over seeds,
each cell's test accuracy beside the paper's.

    python -m gkd_tune.reproduce --config reproduce/table2-cifar10.yaml [--epochs N] [--seeds K] [--out DIR]

The grid (pair x method x seed) runs as Ray Tune trials, like a sweep but with no search and no early stopping,
on this machine or a Ray cluster (--address); each teacher is trained once by a Ray task and shared by its pairs.
Every trial's student is evaluated once on the test split, after its last epoch. Writes DIR/table.md,
DIR/runs.parquet (one row per trial and epoch) and DIR/radar.png (the paper's Figure 2), and logs them to one
MLflow parent run with a child run per trial.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import engine
from .cli import check_output_folder, run_command, shared_options
from .core.files import REPRODUCTION_FILE
from .core.models import MODELS
from .engine import Trials, TuneSettings, evaluate_once
from .sweep.resume import effective, resume_command
from .sweep.space import SpaceError, SweepSpec, TrialPlan, parse_space, read_yaml
from .sweep.storage import SweepStorage
from .sweep.strategy import COMPLETED

METHODS = ("student", "kd", "gompertz")
PAPER_COLUMNS = ("teacher", *METHODS)
# The sweep-like sections a configuration shares with a space file (see search_spaces/), and its own keys.
SHARED_KEYS = ("name", "data", "teacher", "training", "search", "resources", "tracking", "storage_path")
CONFIG_KEYS = (*SHARED_KEYS, "dataset", "seeds", "pairs", "params", "methods")
# "Reproduced" when our mean gain of Gompertz over KD is at least this share of the paper's and above its std.
REPRODUCED_SHARE = 0.5


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    paper: dict = field(default_factory=dict)  # the paper's accuracy per column (teacher, student, kd, gompertz)

    @property
    def label(self) -> str:
        return f"{self.teacher} -> {self.student}"


@dataclass(frozen=True)
class Reproduction:
    name: str
    file: str
    dataset: str
    pairs: tuple[Pair, ...]
    methods: tuple[str, ...]
    seeds: int
    epochs: int
    planned_epochs: int  # the configuration's budget; a smaller --epochs is a reduced-budget run
    specs: dict  # "pair:method" -> the SweepSpec its trials run with

    def spec(self, pair: int, method: str) -> SweepSpec:
        return self.specs[f"{pair}:{method}"]

    @property
    def any_spec(self) -> SweepSpec:
        return next(iter(self.specs.values()))

    def cells(self) -> list[dict]:
        return [{"pair": i, "method": m, "seed": s, "label": f"{p.label} {m} seed {s}"}
                for i, p in enumerate(self.pairs) for m in self.methods for s in range(self.seeds)]


def load_config(path: Path | str, epochs: int | None = None, seeds: int | None = None, storage_path: str | None = None,
                tracking_uri: str | None = None) -> Reproduction:
    """A reproduction configuration, checked like a space file: errors name the file and the field. The keyword
    arguments are the command line's overrides (None: the file's value)."""
    raw = read_yaml(path)

    def fail(where: str, problem: str):
        raise SpaceError(path, where, problem)

    if not isinstance(raw, dict):
        fail("file", "must be a mapping of " + ", ".join(CONFIG_KEYS))
    for key in raw:
        if key not in CONFIG_KEYS:
            fail(str(key), f"unknown key; allowed: {', '.join(CONFIG_KEYS)}")
    seeds = raw.get("seeds", 3) if seeds is None else seeds
    if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= 100:
        fail("seeds", f"must be a whole number in [1, 100], got {seeds!r}")
    if not isinstance(raw.get("pairs"), list) or not raw["pairs"]:
        fail("pairs", "must be a list of {teacher: ARCH, student: ARCH, paper: {...}}")
    pairs = []
    for i, item in enumerate(raw["pairs"]):
        where = f"pairs[{i}]"
        if not isinstance(item, dict) or set(item) - {"teacher", "student", "paper"}:
            fail(where, "must be {teacher: ARCH, student: ARCH, paper: {teacher, student, kd, gompertz}}")
        for role in ("teacher", "student"):
            if item.get(role) not in MODELS:
                fail(f"{where}.{role}", f"must be one of {', '.join(MODELS)}, got {item.get(role)!r}")
        paper = item.get("paper") or {}
        if not isinstance(paper, dict):
            fail(f"{where}.paper", f"must be a mapping of {', '.join(PAPER_COLUMNS)} to accuracies")
        for column, value in paper.items():
            if column not in PAPER_COLUMNS:
                fail(f"{where}.paper.{column}", f"unknown column; allowed: {', '.join(PAPER_COLUMNS)}")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                fail(f"{where}.paper.{column}", f"must be an accuracy in [0, 1], got {value!r}")
        pairs.append(Pair(item["teacher"], item["student"], dict(paper)))
    methods = raw.get("methods") or {m: {} for m in METHODS}
    if not isinstance(methods, dict):
        fail("methods", f"must be a mapping of methods ({', '.join(METHODS)}) to their parameters")
    for method, values in methods.items():
        if method not in METHODS:
            fail(f"methods.{method}", f"unknown method; allowed: {', '.join(METHODS)}")
        if values is not None and not isinstance(values, dict):
            fail(f"methods.{method}", "must be a mapping of parameters (as in a space file's params)")
    if not isinstance(raw.get("params") or {}, dict):
        fail("params", "must be a mapping of parameters every method shares (lr, weight_decay, ...)")
    training = dict(raw.get("training") or {})
    planned = training.get("max_epochs", 10)
    if epochs is not None:
        if epochs < 1:
            fail("--epochs", f"must be >= 1, got {epochs}")
        training["max_epochs"] = epochs
    specs = {}
    for i, pair in enumerate(pairs):
        for method, own in methods.items():
            values = {**(raw.get("params") or {}), **(own or {})}  # shared params, then the method's own
            if "from_sweep" in values:
                values = {**best_of_sweep(values.pop("from_sweep"), path, f"methods.{method}.from_sweep"), **values}
            space = {key: raw[key] for key in SHARED_KEYS if key in raw}
            space.update(teacher={**(raw.get("teacher") or {}), "arch": pair.teacher}, student=pair.student,
                         training=training, params={**values, "method": method})
            try:
                specs[f"{i}:{method}"] = parse_space(space, path).with_overrides(storage_path=storage_path,
                                                                                  tracking_uri=tracking_uri)
            except SpaceError as error:  # name the configuration's own field: a method's, or the shared params'
                key = re.match(rf"{re.escape(str(path))}: params\.(\w+)", str(error))
                message = str(error)
                if key and key[1] in (own or {}):
                    message = message.replace(f"{path}: params.", f"{path}: methods.{method}.", 1)
                raise ValueError(message) from None
    spec = next(iter(specs.values()))
    return Reproduction(spec.name, str(path), str(raw.get("dataset", spec.data.source)), tuple(pairs),
                        tuple(methods), seeds, spec.training.max_epochs, planned, specs)


def best_of_sweep(where: str, config_file, field_path: str) -> dict:
    """The parameters of a finished sweep's best completed trial by validation (its fixed values included): a
    sweep's storage folder, or a sweep name under ./runs."""
    from ray import tune

    from .core.files import SPACE_FILE
    from .sweep.report import summarise, sweep_results, winners
    from .sweep.space import chosen_values, load_space

    folder = Path(where).expanduser()
    folder = folder if folder.is_dir() else Path("runs") / where
    if not (folder / SPACE_FILE).exists() or not tune.Tuner.can_restore(str(folder.resolve())):
        raise SpaceError(config_file, field_path, f"no finished sweep at {where} (a sweep's storage folder, or a "
                                                  f"name under ./runs)")
    spec = load_space(folder / SPACE_FILE)
    best = winners(summarise(sweep_results(str(folder.resolve())), spec))
    if not best:
        raise SpaceError(config_file, field_path, f"the sweep at {where} has no completed trial")
    varied = {**spec.searched(), **spec.grid()}
    chosen = chosen_values(spec, {k: v for k, v in best[0].config.items() if k in varied})
    chosen.pop("method", None)
    chosen.pop("seed", None)  # the reproduction's own seeds
    return chosen


# ------------------------------------------------------------------------------------------------------ running


def reproduce_trial(config: dict, reproduction: Reproduction, teachers: dict) -> None:
    """One cell of the grid: the sweep trainable, with the cell's spec and its teacher's storage folder."""
    from .sweep.trainable import train_trial

    cell = config["cell"]
    spec = reproduction.spec(cell["pair"], cell["method"])
    train_trial({"seed": cell["seed"]}, spec, teachers[spec.teacher.arch])


def make_logger(reproduction: Reproduction, location: str):
    from .sweep.tracking import MlflowTrialLogger

    class ReproductionLogger(MlflowTrialLogger):
        """A child run per cell, named after it (its parameters come with its plan, as every trial's)."""

        def __init__(self, reproduction: Reproduction, location: str):
            super().__init__(reproduction.any_spec, location)
            self.reproduction = reproduction

        def __getstate__(self):
            return {"reproduction": self.reproduction, "sweep_location": self.sweep_location}

        def __setstate__(self, state):
            self.__init__(state["reproduction"], state["sweep_location"])

        def run_name(self, trial) -> str:
            return trial.config["cell"]["label"]

    return ReproductionLogger(reproduction, location)


def resume_command_for(args: argparse.Namespace) -> str:
    return resume_command("gkd_tune.reproduce", {
        "--config": args.config, "--epochs": args.epochs, "--seeds": args.seeds, "--out": args.out,
        "--storage-path": args.storage_path, "--tracking-uri": args.tracking_uri, "--address": args.address})


class ReproductionTrials(Trials):
    """The grid for the engine: pair x method x seed, one teacher per architecture, no search and no early
    stopping; every completed student tested once; the table, its rows and the radar."""

    kind = "reproduction"
    record_name = REPRODUCTION_FILE

    def __init__(self, reproduction: Reproduction, args: argparse.Namespace):
        configuration = effective(args.config, {"training.max_epochs": args.epochs, "seeds": args.seeds,
                                                "storage_path": args.storage_path, "tracking.uri": args.tracking_uri})
        super().__init__(reproduction.any_spec, configuration, args.resume, args.address)
        self.reproduction, self.args = reproduction, args
        # the spec a teacher is trained with: its first pair's, of the first method
        self.teacher_specs = {pair.teacher: reproduction.spec(i, reproduction.methods[0])
                              for i, pair in reversed(list(enumerate(reproduction.pairs)))}

    @property
    def count(self) -> int:
        return len(self.reproduction.cells())

    def resume_command(self) -> str:
        return resume_command_for(self.args)

    def teachers(self, storage: SweepStorage) -> list:
        return [(spec, storage.child("teachers").child(arch)) for arch, spec in self.teacher_specs.items()]

    def trainable(self, storage: SweepStorage, teachers: list):
        from ray import tune

        folders = {spec.teacher.arch: folder for spec, folder in teachers}
        return tune.with_parameters(reproduce_trial, reproduction=self.reproduction, teachers=folders)

    def tune_settings(self, storage: SweepStorage, tracker, teachers_metadata: list[dict]) -> TuneSettings:
        from mlflow.entities import Param
        from ray import tune

        reproduction, spec = self.reproduction, self.spec
        tracker.client.log_artifact(tracker.parent_id, reproduction.file, "config")
        tracker.client.log_batch(tracker.parent_id, params=[
            Param(k, str(v)) for k, v in {"epochs": reproduction.epochs, "seeds": reproduction.seeds,
                                          "data": spec.data.source, "pairs": len(reproduction.pairs)}.items()])
        return TuneSettings(param_space={"cell": tune.grid_search(reproduction.cells())},
                            callbacks=[make_logger(reproduction, storage.location)])

    def finish(self, results, tracker, teachers: list) -> int:
        return present(self.args, self.reproduction, results, tracker, teachers)


def present(args, reproduction: Reproduction, results, tracker, teachers: list) -> int:
    """The finished grid: every completed student tested once, the teachers too; table.md, runs.parquet and
    radar.png written to --out and logged to the reproduction's run."""
    import ray

    from .sweep.report import summarise, write_parquet
    from .cluster.runtime import trial_task
    from .sweep.trainable import evaluate_teacher_on_test_split

    trials = []  # (cell, its summary with the test metrics measured so far, its spec) of every trial
    for result in results:
        cell = result.config["cell"]
        cell_spec = reproduction.spec(cell["pair"], cell["method"])
        [summary] = summarise([result], cell_spec)
        trials.append((cell, summary, cell_spec))
    evaluate_once([(summary, cell_spec) for _, summary, cell_spec in trials if summary.outcome == COMPLETED],
                  tracker)
    task = trial_task(evaluate_teacher_on_test_split, reproduction.any_spec)
    teacher_test = dict(zip([spec.teacher.arch for spec, _ in teachers],
                            ray.get([task.remote(spec, folder) for spec, folder in teachers])))

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = epoch_rows(trials, reproduction)
    write_parquet(rows, out / "runs.parquet")
    table = table_markdown(reproduction, rows, teacher_test)
    (out / "table.md").write_text(table)
    figure = radar(reproduction, rows)
    figure.savefig(out / "radar.png", dpi=120)
    for name in ("table.md", "runs.parquet", "radar.png"):
        tracker.client.log_artifact(tracker.parent_id, str(out / name))
    tracker.describe(table)
    tracker.finish("FINISHED")
    print("\n" + table + f"\nwritten: {out / 'table.md'}, {out / 'runs.parquet'}, {out / 'radar.png'}")
    return 0


# ------------------------------------------------------------------------------------------------------ results


def epoch_rows(trials, reproduction: Reproduction) -> list[dict]:
    """One row per trial and epoch (report.epoch_rows), with the trial's cell: pair, method, seed; in the
    configuration's order (pairs, methods, seeds), whatever order Ray Tune returns the trials in."""
    from .sweep.report import epoch_rows as rows_of

    def order(trial) -> tuple:
        cell = trial[0]
        return cell["pair"], reproduction.methods.index(cell["method"]), cell["seed"]

    rows = []
    for cell, summary, cell_spec in sorted(trials, key=order):
        pair = reproduction.pairs[cell["pair"]]
        rows += rows_of(summary, pair=pair.label, teacher_arch=pair.teacher, student_arch=pair.student,
                        method=cell["method"], seed=cell["seed"])
    return rows


def final_accuracies(rows: list[dict], pair_label: str, method: str) -> dict[int, float]:
    """seed -> last-epoch test accuracy of the completed trials of one cell."""
    return {row["seed"]: row["test_acc"] for row in rows if row["pair"] == pair_label and row["method"] == method
            and row["test_acc"] is not None and row["outcome"] == COMPLETED}


def mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table_markdown(reproduction: Reproduction, rows: list[dict], teacher_test: dict) -> str:
    spec = reproduction.any_spec
    reduced = reproduction.epochs < reproduction.planned_epochs
    training = TrialPlan.resolve(spec, {}).train
    recipe = (f"lr {training.lr}, batch {training.batch_size}, {training.lr_schedule}; teacher "
              f"{spec.teacher.recipe.epochs} epochs")
    lines = [f"# {reproduction.name}: Table 2 on {reproduction.dataset}",
             "",
             f"Test accuracy at the last epoch, mean +- std over {reproduction.seeds} seed(s); "
             f"{reproduction.epochs} epochs ({recipe})"
             + (f". **Reduced budget**: {reproduction.epochs} of the configuration's {reproduction.planned_epochs} "
                f"epochs." if reduced else "."),
             "Paper values in brackets (single runs, budget not stated). Test split evaluated once per trial, after "
             "its last epoch.",
             "",
             "| teacher -> student | teacher | student alone | KD | Gompertz | Gompertz - KD |",
             "|---|---|---|---|---|---|"]

    def cell(value: tuple[float, float] | None, paper: float | None) -> str:
        ours = f"{value[0]:.4f} +- {value[1]:.4f}" if value else "-"
        return ours + (f" ({paper:.4f})" if paper is not None else "")

    gains, paper_gains = [], []
    for pair in reproduction.pairs:
        teacher = teacher_test.get(pair.teacher)
        values = {m: final_accuracies(rows, pair.label, m) for m in METHODS}
        both = sorted(set(values["kd"]) & set(values["gompertz"]))
        differences = [values["gompertz"][s] - values["kd"][s] for s in both]  # paired by seed
        gain = mean_std(differences)
        if gain:
            gains.extend(differences)
        paper_gain = (pair.paper["gompertz"] - pair.paper["kd"]) if {"kd", "gompertz"} <= set(pair.paper) else None
        if paper_gain is not None:
            paper_gains.append(paper_gain)
        lines.append(" | ".join([
            f"| {pair.label}",
            (f"{teacher['test_acc']:.4f}" if teacher else "-") + (f" ({pair.paper['teacher']:.4f})"
                                                                  if "teacher" in pair.paper else ""),
            *(cell(mean_std(list(values[m].values())), pair.paper.get(m)) for m in METHODS),
            (f"{gain[0]:+.4f} +- {gain[1]:.4f}" if gain else "-") + (f" ({paper_gain:+.4f})"
                                                                   if paper_gain is not None else "")]) + " |")
    missing = [f"{row['pair']} {row['method']} seed {row['seed']}: {row['outcome']}" for row in rows
               if row["outcome"] != COMPLETED and row["epoch"] == max(r["epoch"] for r in rows
                                                                       if r["trial_id"] == row["trial_id"])]
    lines += ["", verdict(reproduction, gains, paper_gains)]
    if missing:
        lines += ["", "Left out of the means (not completed): " + "; ".join(missing)]
    return "\n".join(lines) + "\n"


def verdict(reproduction: Reproduction, gains: list[float], paper_gains: list[float]) -> str:
    """One plain sentence: is the paper's gain of Gompertz over KD reproduced on this dataset, at this budget?"""
    budget = f"at {reproduction.epochs} epochs and {reproduction.seeds} seed(s)"
    if not gains:
        return f"On {reproduction.dataset}, no pair has both KD and Gompertz results {budget}: nothing to compare."
    ours = mean_std(gains)
    paper = statistics.fmean(paper_gains) if paper_gains else None
    said = f"the paper reports {paper * 100:+.1f} points" if paper is not None else "the paper gives no values"
    measured = f"we measure {ours[0] * 100:+.1f} +- {ours[1] * 100:.1f} points (Gompertz - KD, over pairs and seeds)"
    if paper is None or paper <= 0:
        result = "there is no paper gain to compare with"
    elif ours[0] >= REPRODUCED_SHARE * paper and ours[0] > ours[1]:
        result = "the paper's gain is reproduced"
    elif ours[0] > ours[1]:
        result = "Gompertz beats KD, but by less than half the paper's gain: reproduced in direction only"
    else:
        result = "the paper's gain is not reproduced"
    return (f"On {reproduction.dataset} {budget}, {said} and {measured}: {result} (reproduced: our mean gain is at "
            f"least {REPRODUCED_SHARE:.0%} of the paper's and above its std).")


def radar(reproduction: Reproduction, rows: list[dict]):
    """The paper's Figure 2: one axis per pair, KD and Gompertz, ours (mean over seeds) and the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [pair.label for pair in reproduction.pairs]
    angles = [2 * math.pi * i / len(labels) for i in range(len(labels))]
    figure = plt.figure(figsize=(6.5, 6))
    axes = figure.add_subplot(projection="polar")
    for method, color in (("kd", "tab:blue"), ("gompertz", "tab:red")):
        for source, style in (("ours", "-"), ("paper", "--")):
            if source == "ours":
                values = [(mean_std(list(final_accuracies(rows, p.label, method).values())) or (math.nan,))[0]
                          for p in reproduction.pairs]
            else:
                values = [p.paper.get(method, math.nan) for p in reproduction.pairs]
            if all(math.isnan(v) for v in values):
                continue
            axes.plot(angles + angles[:1], values + values[:1], style, color=color, marker="o",
                      label=f"{'KD' if method == 'kd' else 'Gompertz'} ({source})")
    axes.set_xticks(angles)
    axes.set_xticklabels(labels, fontsize=8)
    axes.tick_params(axis="x", pad=18)
    axes.set_ylim(0, 1)
    axes.set_title(f"{reproduction.dataset}: test accuracy, {reproduction.epochs} epochs", pad=20)
    axes.legend(loc="lower right", bbox_to_anchor=(1.25, -0.1), fontsize=8)
    figure.tight_layout()
    plt.close(figure)
    return figure


# ------------------------------------------------------------------------------------------------------ command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.reproduce", description=__doc__.split("\n\n")[0],
                                     parents=[shared_options()])
    parser.add_argument("--config", type=Path, required=True, help="reproduction YAML file (see reproduce/)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (overrides training.max_epochs; fewer than "
                                                   "the configuration's is reported as a reduced budget)")
    parser.add_argument("--seeds", type=int, help="seeds per cell (overrides seeds; default 3)")
    parser.add_argument("--out", type=Path, help="folder for table.md, runs.parquet, radar.png (default "
                                                 "reproductions/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted reproduction")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .cluster.preflight import check_before_ray

    args = build_parser().parse_args(argv)

    def reproduce() -> int:
        reproduction = load_config(args.config, args.epochs, args.seeds, args.storage_path, args.tracking_uri)
        args.out = check_output_folder(args.out or Path("reproductions") / reproduction.name,
                                       "--out" if args.out else "the reproduction's folder")
        print(f"reproduction {reproduction.name} ({reproduction.file}): {len(reproduction.pairs)} pair(s) x "
              f"{len(reproduction.methods)} method(s) x {reproduction.seeds} seed(s) = {len(reproduction.cells())} "
              f"trials of {reproduction.epochs} epochs on {reproduction.any_spec.data.source}", flush=True)
        check_before_ray(reproduction.any_spec, args.address)
        return engine.run(ReproductionTrials(reproduction, args))

    # Ctrl-C reaches here only before the trials start: Tune handles it once they run
    return run_command(reproduce, args.debug, lambda: "interrupted before any trial started; nothing to resume")


if __name__ == "__main__":
    sys.exit(main())
