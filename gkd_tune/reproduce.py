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
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from . import engine
from .cli import check_output_folder, run_command, shared_options
from .core.files import REPRODUCTION_FILE
from .core.distillers import METHODS, read_by_method
from .core.models import MODEL_NAMES, file_part
from .core.stats import Difference
from .engine import Trials, TuneSettings, evaluate_once
from .sweep.resume import effective, resume_command
from .sweep.space import SpaceError, SweepSpec, TrialPlan, parse_space, read_yaml
from .sweep.storage import SweepStorage
from .sweep.strategy import COMPLETED

# Table 2's columns, the default rows of a configuration without `methods`.
TABLE2_METHODS = ("student", "kd", "gompertz")
# The sweep-like sections a configuration shares with a space file (see search_spaces/), and its own keys.
SHARED_KEYS = ("name", "data", "teacher", "training", "search", "resources", "tracking", "storage_path")
CONFIG_KEYS = (*SHARED_KEYS, "dataset", "seeds", "pairs", "params", "methods", "reference", "published_on",
               "published_by")
PAIR_KEYS = ("teacher", "student", "params", "paper")
# A gain is "reproduced" only over at least this many seeds, with both 95% intervals above 0 (see verdict).
MIN_SEEDS_FOR_VERDICT = 3


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    paper: dict = field(default_factory=dict)  # the published accuracy per column (teacher, each method's name)

    @property
    def label(self) -> str:
        return f"{self.teacher} -> {self.student}"


@dataclass(frozen=True)
class Reproduction:
    name: str
    file: str
    dataset: str
    pairs: tuple[Pair, ...]
    methods: tuple[str, ...]  # the rows' names: a registered method's, or one of the configuration's own
    seeds: int
    epochs: int
    planned_epochs: int  # the configuration's budget; a smaller --epochs is a reduced-budget run
    specs: dict  # "pair:method" -> the SweepSpec its trials run with
    reference: str = "gompertz"  # the method every other one is compared with, paired by seed
    published_on: str | None = None  # the data source the pairs' published values were measured on
    published_by: str = "the paper"
    tuned: tuple[str, ...] = ()  # the methods whose parameters come from a sweep (from_sweep)

    @property
    def published_here(self) -> bool:
        """Whether the published values were measured on this reproduction's data (else: for layout only)."""
        return self.published_on == self.any_spec.data.source

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
    methods = raw.get("methods") or {m: {} for m in TABLE2_METHODS}
    if not isinstance(methods, dict):
        fail("methods", f"must be a mapping of names to parameters (a registered method: {', '.join(METHODS)}, or "
                        f"a name of your own with `method:`)")
    for name, values in methods.items():
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            fail(f"methods.{name}", "must be a name of lower-case letters, digits and _")
        if values is not None and not isinstance(values, dict):
            fail(f"methods.{name}", "must be a mapping of parameters (as in a space file's params)")
        method = (values or {}).get("method", name)
        if method not in METHODS:
            fail(f"methods.{name}" + (".method" if "method" in (values or {}) else ""),
                 f"unknown method; allowed: {', '.join(METHODS)} (or a name of your own with `method:`)")
    columns = ("teacher", *dict.fromkeys([*methods, *METHODS]))  # (a published method that is not run is shown)
    pairs = []
    for i, item in enumerate(raw["pairs"]):
        where = f"pairs[{i}]"
        if not isinstance(item, dict) or set(item) - set(PAIR_KEYS):
            fail(where, f"must be {{teacher: ARCH, student: ARCH, params: {{lr: ...}}, paper: "
                        f"{{{', '.join(columns)}}}}}")
        for role in ("teacher", "student"):
            if item.get(role) not in MODEL_NAMES:
                fail(f"{where}.{role}", MODEL_NAMES.problem(item.get(role)))
        paper = item.get("paper") or {}
        if not isinstance(paper, dict):
            fail(f"{where}.paper", f"must be a mapping of {', '.join(columns)} to accuracies")
        for column, value in paper.items():
            if column not in columns:
                fail(f"{where}.paper.{column}", f"unknown column; allowed: {', '.join(columns)}")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                fail(f"{where}.paper.{column}", f"must be an accuracy in [0, 1], got {value!r}")
        if not isinstance(item.get("params") or {}, dict):
            fail(f"{where}.params", "must be a mapping of parameters this pair's methods share (lr, ...)")
        pairs.append(Pair(item["teacher"], item["student"], dict(paper)))
    if not isinstance(raw.get("params") or {}, dict):
        fail("params", "must be a mapping of parameters every method shares (lr, weight_decay, ...)")
    reference = raw.get("reference", "gompertz" if "gompertz" in methods else next(iter(methods)))
    if reference not in methods:
        fail("reference", f"must be one of the methods ({', '.join(methods)}), got {reference!r}")
    for key in ("published_on", "published_by"):
        if key in raw and not isinstance(raw[key], str):
            fail(key, f"must be a text, got {raw[key]!r}")
    training = dict(raw.get("training") or {})
    planned = training.get("max_epochs", 10)
    if epochs is not None:
        if epochs < 1:
            fail("--epochs", f"must be >= 1, got {epochs}")
        training["max_epochs"] = epochs
    specs = {}
    for i, pair in enumerate(pairs):
        for name, own in methods.items():
            own = dict(own or {})
            method = own.pop("method", name)
            # shared params, then the pair's (its student's lr), then the method's own
            values = {**(raw.get("params") or {}), **(raw["pairs"][i].get("params") or {}), **own}
            if "from_sweep" in values:
                values = {**best_of_sweep(values.pop("from_sweep"), path, f"methods.{name}.from_sweep"), **values}
            space = {key: raw[key] for key in SHARED_KEYS if key in raw}
            space.update(teacher={**(raw.get("teacher") or {}), "arch": pair.teacher}, student=pair.student,
                         training=training, params={**values, "method": method})
            try:
                specs[f"{i}:{name}"] = parse_space(space, path).with_overrides(storage_path=storage_path,
                                                                                tracking_uri=tracking_uri)
            except SpaceError as error:  # name the configuration's own field: a method's, a pair's or the shared
                key = re.match(rf"{re.escape(str(path))}: params\.(\w+)", str(error))
                message = str(error)
                if key and key[1] in own:
                    message = message.replace(f"{path}: params.", f"{path}: methods.{name}.", 1)
                elif key and key[1] in (raw["pairs"][i].get("params") or {}):
                    message = message.replace(f"{path}: params.", f"{path}: pairs[{i}].params.", 1)
                raise ValueError(message) from None
    spec = next(iter(specs.values()))
    tuned = tuple(name for name, own in methods.items() if "from_sweep" in (own or {}))
    return Reproduction(spec.name, str(path), str(raw.get("dataset", spec.data.source)), tuple(pairs),
                        tuple(methods), seeds, spec.training.max_epochs, planned, specs, reference,
                        raw.get("published_on"), raw.get("published_by", "the paper"), tuned)


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
        super().__init__(reproduction.any_spec, configuration, args.resume, args.address, verbose=args.verbose)
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
        return [(spec, storage.child("teachers").child(file_part(arch))) for arch, spec in self.teacher_specs.items()]

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


def paired_difference(rows: list[dict], pair_label: str, first: str, second: str) -> Difference | None:
    """first - second, test accuracy at the last epoch, over the seeds both completed."""
    a, b = final_accuracies(rows, pair_label, first), final_accuracies(rows, pair_label, second)
    return Difference.of([a[seed] - b[seed] for seed in sorted(set(a) & set(b))])


def inconsistencies(pair: Pair) -> list[str]:
    """What in a pair's published row contradicts itself: KD below its own student alone (distillation that only
    hurts), a teacher below the student trained alone (a teacher the student's architecture beats without it).
    Such a row is flagged and never enters a verdict. (A distilled student above its teacher is no contradiction.)"""
    paper, problems = pair.paper, []
    if "student" in paper:
        if "kd" in paper and paper["kd"] < paper["student"]:
            problems.append(f"KD ({paper['kd']:.4f}) below its student alone ({paper['student']:.4f})")
        if "teacher" in paper and paper["teacher"] < paper["student"]:
            problems.append(f"the teacher ({paper['teacher']:.4f}) below the student alone ({paper['student']:.4f})")
    return problems


def published_losses(pair: Pair) -> str:
    """'' where the published row claims Gompertz above both KD and the student alone; else what it shows instead
    (the paper's CIFAR-100 ResNet50 -> ResNet34 row: Gompertz 0.6722, KD 0.6940). Such a row claims no gain, so no
    run of ours can reproduce one."""
    paper = pair.paper
    return "; ".join(f"Gompertz ({paper['gompertz']:.4f}) at or below {name} ({paper[key]:.4f})"
                     for key, name in (("kd", "KD"), ("student", "the student alone"))
                     if paper["gompertz"] <= paper[key])


def table_markdown(reproduction: Reproduction, rows: list[dict], teacher_test: dict) -> str:
    spec, reference = reproduction.any_spec, reproduction.reference
    reduced = reproduction.epochs < reproduction.planned_epochs
    training = TrialPlan.resolve(spec, {}).train
    teacher = spec.teacher.recipe
    names = {name: name for name in reproduction.methods} | {"student": "student alone", "kd": "KD", "dkd": "DKD",
                                                              "gompertz": "Gompertz"}
    held_out = spec.data.val_fraction
    published = reproduction.published_by
    lines = [f"# {reproduction.name}: {reproduction.dataset}",
             "",
             f"Test accuracy at the last epoch, mean +- std over {reproduction.seeds} seed(s); "
             f"{reproduction.epochs} epochs ({lr_text(reproduction)}, batch {training.batch_size}, "
             f"{training.lr_schedule})"
             + (f". **Reduced budget**: {reproduction.epochs} of the configuration's {reproduction.planned_epochs} "
                f"epochs." if reduced else "."),
             f"Each teacher is trained once ({teacher.epochs} epochs, lr {teacher.lr}, batch {teacher.batch_size}, "
             f"seed {teacher.seed}) and shared by every seed: the +- holds no teacher variance. Students train on "
             f"{1 - held_out:.0%} of the training set ({held_out:.0%} held out for validation); the test split is "
             f"evaluated once per trial, after its last epoch.",
             (f"Published values in brackets ({published})." if reproduction.published_here else
              f"Published values in brackets ({published}), measured on {reproduction.published_on}, not on this "
              f"data: for layout only." if reproduction.published_on else
              f"Published values in brackets ({published}), for layout only (the configuration names no "
              f"`published_on`)."),
             ]
    if reproduction.tuned:
        untuned = [names[m] for m in reproduction.methods if m not in reproduction.tuned and m != "student"]
        lines.append(f"Tuned on validation (from_sweep): {', '.join(names[m] for m in reproduction.tuned)} only"
                     + (f"; {', '.join(untuned)} use fixed recipes." if untuned else "."))
    lines += ["", "| teacher -> student | teacher | " + " | ".join(names[m] for m in reproduction.methods) + " |",
              "|---" * (2 + len(reproduction.methods)) + "|"]

    def cell(value: tuple[float, float] | None, paper: float | None) -> str:
        ours = f"{value[0]:.4f} +- {value[1]:.4f}" if value else "-"
        return ours + (f" ({paper:.4f})" if paper is not None else "")

    flagged = []
    for pair in reproduction.pairs:
        measured = teacher_test.get(pair.teacher)
        problems = inconsistencies(pair)
        if problems:
            flagged.append(f"{pair.label}: {'; '.join(problems)}")
        lines.append(" | ".join([
            f"| {pair.label}" + (" (!)" if problems else ""),
            (f"{measured['test_acc']:.4f}" if measured else "-")
            + (f" ({pair.paper['teacher']:.4f})" if "teacher" in pair.paper else ""),
            *(cell(mean_std(list(final_accuracies(rows, pair.label, m).values())), pair.paper.get(m))
              for m in reproduction.methods)]) + " |")
    if flagged:
        lines += ["", "(!) The published row contradicts itself, so it is left out of any verdict: "
                      + "; ".join(flagged) + "."]

    others = [m for m in reproduction.methods if m != reference]
    lines += ["", f"Paired differences by seed, {names[reference]} minus each method: mean [95% t-interval] n "
                  f"(above 0: {names[reference]} better; below: worse; across 0: no difference shown).", "",
              "| teacher -> student | " + " | ".join(f"{names[reference]} - {names[m]}" for m in others) + " |",
              "|---" * (1 + len(others)) + "|"]
    for pair in reproduction.pairs:
        differences = [paired_difference(rows, pair.label, reference, m) for m in others]
        lines.append(f"| {pair.label} | " + " | ".join(
            (d.text() + (" better" if d.above_zero else " worse" if d.below_zero else "")) if d else "-"
            for d in differences) + " |")
    missing = [f"{row['pair']} {row['method']} seed {row['seed']}: {row['outcome']}" for row in rows
               if row["outcome"] != COMPLETED and row["epoch"] == max(r["epoch"] for r in rows
                                                                       if r["trial_id"] == row["trial_id"])]
    lines += ["", *verdict(reproduction, rows)]
    if missing:
        lines += ["", "Left out of the means (not completed): " + "; ".join(missing)]
    return "\n".join(lines) + "\n"


def lr_text(reproduction: Reproduction) -> str:
    """'lr 0.1', or the lr of each student where the pairs give their own."""
    rates = {pair.student: reproduction.spec(i, reproduction.reference).fixed()["lr"]
             for i, pair in enumerate(reproduction.pairs)}
    if len(set(rates.values())) == 1:
        return f"lr {next(iter(rates.values()))}"
    return "lr " + ", ".join(f"{rate} for {student}" for student, rate in rates.items())


VERDICT_RULE = (f"Rule: a pair's gain is reproduced when, over at least {MIN_SEEDS_FOR_VERDICT} seeds, the 95% "
                f"t-intervals of Gompertz - KD and of Gompertz - student alone (paired by seed) both lie above 0, on "
                f"the data the published values were measured on; a pair whose published row contradicts itself is "
                f"left out, a pair whose published row shows Gompertz at or below KD or the student alone has no "
                f"published gain to reproduce (never 'reproduced', whatever this run measures), and pairs are never "
                f"pooled.")


def verdict(reproduction: Reproduction, rows: list[dict]) -> list[str]:
    """Per pair, whether the published gain of Gompertz over both KD and the student alone is reproduced, with the
    rule; nothing where the reproduction cannot say (other data, no KD or student rows, a method other than
    Gompertz as the reference)."""
    if reproduction.reference != "gompertz" or not {"kd", "student"} <= set(reproduction.methods):
        return []
    if not reproduction.published_here:
        where = f"on {reproduction.published_on}" if reproduction.published_on else "elsewhere"
        return [f"No verdict: the published values were measured {where}, this run is on "
                f"{reproduction.any_spec.data.source}."]
    lines, reproduced, comparable = ["Verdict per pair:", ""], 0, 0
    for pair in reproduction.pairs:
        over_kd = paired_difference(rows, pair.label, "gompertz", "kd")
        over_student = paired_difference(rows, pair.label, "gompertz", "student")
        n = min(d.n if d else 0 for d in (over_kd, over_student))
        if not {"gompertz", "kd", "student"} <= set(pair.paper):
            said = "no published values to compare with"
        elif inconsistencies(pair):
            said = "left out: the published row contradicts itself (!)"
        elif published_losses(pair):
            said = (f"no published gain to reproduce: the published row shows {published_losses(pair)}; here "
                    f"Gompertz - KD is {over_kd.text() if over_kd else '-'}")
        elif n < MIN_SEEDS_FOR_VERDICT:
            comparable += 1
            said = f"no verdict: n = {n} seed(s), fewer than {MIN_SEEDS_FOR_VERDICT}"
        else:
            comparable += 1
            if over_kd.above_zero and over_student.above_zero:
                reproduced += 1
                said = "reproduced: Gompertz above both KD and the student alone"
            elif over_kd.mean > 0 and over_student.mean > 0:
                said = "direction only: Gompertz ahead of both, but an interval reaches 0"
            else:
                said = "not reproduced"
        lines.append(f"- {pair.label}: {said}.")
    lines += ["", f"Reproduced on {reproduced} of {comparable} comparable pair(s) at {reproduction.epochs} epochs."
              if comparable else "No pair has a consistent published gain of Gompertz over KD and the student alone to "
                                 "reproduce.",
              VERDICT_RULE]
    return lines


def radar(reproduction: Reproduction, rows: list[dict]):
    """The paper's Figure 2, one axis per pair, KD and Gompertz, ours (mean over seeds) and the published: with at
    least 3 pairs. With fewer, a radar is dots on a line: a bar chart per pair, every method, ours with its std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [pair.label for pair in reproduction.pairs]
    if len(labels) < 3:
        figure, axes = plt.subplots(figsize=(2 + 1.6 * len(reproduction.methods) * len(labels), 4))
        width = 0.8 / len(reproduction.methods)
        for j, method in enumerate(reproduction.methods):
            stats = [mean_std(list(final_accuracies(rows, p.label, method).values())) or (math.nan, 0.0)
                     for p in reproduction.pairs]
            places = [i + j * width for i in range(len(labels))]
            bars = axes.bar(places, [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=3, label=method)
            axes.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
            published = [p.paper.get(method, math.nan) for p in reproduction.pairs]
            axes.plot(places, published, "kx", label="published" if j == 0 else None)
        axes.set_xticks([i + width * (len(reproduction.methods) - 1) / 2 for i in range(len(labels))], labels)
        axes.set(ylabel="test accuracy", ylim=(0, 1.08),
                 title=f"{reproduction.dataset}\ntest accuracy at epoch {reproduction.epochs}, mean +- std over "
                       f"{reproduction.seeds} seed(s)")
        axes.title.set_fontsize(10)
        axes.legend(fontsize=7, loc="lower right")
        figure.tight_layout()
        plt.close(figure)
        return figure
    angles = [2 * math.pi * i / len(labels) for i in range(len(labels))]
    figure = plt.figure(figsize=(6.5, 6))
    axes = figure.add_subplot(projection="polar")
    for method, color in (("kd", "tab:blue"), ("gompertz", "tab:red")):
        if method not in reproduction.methods:
            continue
        for source, style in (("ours", "-"), ("published", "--")):
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
                                     parents=[shared_options(trials=True)])
    parser.add_argument("--config", type=Path, required=True, help="reproduction YAML file (see reproduce/)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (overrides training.max_epochs; fewer than "
                                                   "the configuration's is reported as a reduced budget)")
    parser.add_argument("--seeds", type=int, help="seeds per cell (overrides seeds; default 3)")
    parser.add_argument("--out", type=Path, help="folder for table.md, runs.parquet, radar.png (default "
                                                 "reproductions/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted reproduction")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the configuration, the data and this machine, print every method's settings per "
                             "pair; train nothing")
    return parser


def describe(reproduction: Reproduction) -> str:
    """Each method's settings as its trials run them (a pair's own lr included), for --dry-run."""
    lines = []
    for i, pair in enumerate(reproduction.pairs):
        lines.append(f"{pair.label}" + (f"  (published: {', '.join(f'{k} {v:.4f}' for k, v in pair.paper.items())})"
                                        if pair.paper else ""))
        reference = read_by_method(reproduction.spec(i, reproduction.reference).fixed())
        for name in reproduction.methods:
            values = read_by_method(reproduction.spec(i, name).fixed())
            if name != reproduction.reference:  # what sets it apart
                values = {k: v for k, v in values.items() if reference.get(k, object()) != v}
            text = ", ".join(f"{k}={v}" for k, v in values.items())
            lines += textwrap.wrap(text, 120, initial_indent=f"  {name:<16}", subsequent_indent=" " * 18)
    verdict_note = ("compared with the published values" if reproduction.published_here else
                    "published values for layout only, no verdict" if reproduction.published_on else
                    "no published values")
    lines.append(f"reference {reproduction.reference}: every other method shows what sets it apart, and its paired "
                 f"difference is against it; {verdict_note}")
    return "\n".join(lines)


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
        if args.dry_run:
            print(describe(reproduction), flush=True)
        check_before_ray(reproduction.any_spec, args.address)
        return 0 if args.dry_run else engine.run(ReproductionTrials(reproduction, args))

    # Ctrl-C reaches here only before the trials start: Tune handles it once they run
    return run_command(reproduce, args.debug, lambda: "interrupted before any trial started; nothing to resume")


if __name__ == "__main__":
    sys.exit(main())
