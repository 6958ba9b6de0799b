"""Replay early-stopping designs on the curves of a finished sweep or fidelity study: epochs spent, the configuration
chosen, its regret and P(top-3) over trial orders; a table and a regret-against-cost plot. Offline, no GPU.

    python -m gkd_tune.simulate --sweep runs/quickstart
    python -m gkd_tune.simulate --sweep benchmarks/results/2026-12-01-fidelity-cifar10k/trials.parquet \\
        --design asha:grace=13,eta=3 --design budget_halving:eta=3

--sweep: a sweep in storage (<storage>/<name>), a report folder or a study folder holding trials.parquet, or the
file itself. Designs (--design, repeatable; options left out take their defaults):
    full                                   every trial to the end (the reference)
    asha:grace=G,eta=E,full=K              Ray Tune's ASHA; the first K trials exempt (full_budget_trials)
    hyperband:grace=G,eta=E,brackets=N     asynchronous Hyperband (ASHA's brackets)
    median:grace=G,min_samples=M           Ray Tune's median stopping rule
    budget_halving:eta=E                   complete runs at each compressed budget, the best 1/E re-run at the next
A replay re-runs the curves that exist: only trials with a whole full-budget curve take part (a sweep's completed
and full_budget_trials ones), and TPE's later proposals cannot be replayed.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from .cli import check_output_folder, run_command, shared_options

TRIALS_FILE = "trials.parquet"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.simulate", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[shared_options(without_address=None, sweep=False)])
    parser.add_argument("--sweep", required=True, help="<storage>/<name>, a folder holding trials.parquet, or the file")
    parser.add_argument("--design", action="append", metavar="DESIGN", help="a design to replay (repeatable; "
                        "default: no stopping, the reference ASHA, ASHA, Hyperband and median stopping from the "
                        "lowest budget, and budget halving where there are several budgets)")
    parser.add_argument("--workers", type=int, help="trials running at once (default: 1 per 8 configurations, the "
                        "CIFAR spaces' 8 of 64)")
    parser.add_argument("--orders", type=int, default=200, help="random trial orders replayed (default 200)")
    parser.add_argument("--reference-grace", type=int, help="the rung of the reference ASHA, which the table's "
                        "costs are also given against (eta 3, 1 trial in 8 exempt; default: half the full budget, "
                        "where the CIFAR spaces had it before they used budget halving)")
    parser.add_argument("--metric", default="val_acc", choices=("val_acc", "val_loss"))
    parser.add_argument("--judge", choices=("val", "test", "both"), help="what a choice is judged by: the "
                        "full-budget validation metric it was made on, the full-budget test accuracy (a larger, "
                        "untouched sample where every configuration was tested: a fidelity study), or both "
                        "(default: both where every configuration has a test result, else val)")
    parser.add_argument("--out", type=Path, help="folder for simulation.md and regret-vs-cost.png (default: the "
                        "folder of trials.parquet; reports/<name> for a sweep in storage)")
    return parser


def read_rows(sweep: str) -> tuple[list[dict], Path | None, str]:
    """(the trials' rows, the folder that holds them or None, the sweep's name)."""
    import pyarrow.parquet as pq

    path = Path(sweep).expanduser()
    file = path if path.suffix == ".parquet" else path / TRIALS_FILE
    if file.is_file():
        try:
            return pq.read_table(file).to_pylist(), file.parent, file.parent.name
        except Exception as error:
            from .core.errors import error_line
            raise ValueError(f"--sweep {sweep}: cannot read {file} ({error_line(error)})") from None
    if path.suffix == ".parquet":
        raise ValueError(f"--sweep {sweep}: no such file")
    return sweep_rows(sweep), None, path.name


def sweep_rows(location: str) -> list[dict]:
    """The rows of a sweep in storage, as its report's trials.parquet has them (test metrics from its MLflow runs,
    where its tracking store answers)."""
    from .cluster.preflight import read_storage
    from .core.files import SPACE_FILE
    from .sweep.space import load_space
    from .sweep.storage import SweepStorage, filesystem_of

    filesystem_of(location)  # a bad URI in one line
    storage = SweepStorage(str(Path(location).expanduser().resolve()) if "://" not in location else location)
    if not read_storage(storage, storage.has_experiment):
        raise ValueError(f"--sweep {location}: no sweep there, and no {TRIALS_FILE} (give <storage>/<name>, a report "
                         f"folder or a study folder)")
    with tempfile.TemporaryDirectory() as directory:
        spec = load_space(storage.get(SPACE_FILE, Path(directory) / SPACE_FILE))
    from .sweep.report import summarise, sweep_results, trial_rows

    trials = summarise(sweep_results(storage.location), spec)
    try:
        from .sweep.tracking import SweepTracker
        tracker = SweepTracker(spec, storage.location, reopen=False)
        for trial in trials:
            trial.test = tracker.test_metrics(trial.trial_id)
    except Exception as error:  # the table still stands without test metrics
        print(f"warning: no test metrics ({type(error).__name__}: {error}); test columns left empty", flush=True)
    return trial_rows(trials)


def table(results, full_epochs: int, reference) -> str:
    from .sweep.simulate import TOP

    head = (f"| design | epochs | share of full | share of the reference ASHA | chosen val | chosen test | regret (pts) "
            f"| regret p90 | P(top-{TOP}) | first cut | rho at first cut [95%] n |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        vs = f"{r.epochs / reference.epochs:.0%}" if reference else "-"
        lines.append(f"| {r.design.label} | {r.epochs:.0f} | {r.share:.0%} | {vs} | {_num(r.chosen_val)} | "
                     f"{_num(r.chosen_test)} | {_pts(r.regret)} | {_pts(r.regret_high)} | {r.top:.2f} | "
                     f"{r.first_cut} | {r.fidelity.text()} |")
    return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"


def _pts(value: float) -> str:
    return f"{100 * value:.2f}" if math.isfinite(value) else "-"


def fidelity_table(configurations, budgets: list[int], reference_grace: int, judges: list[str]) -> str:
    """Spearman's rho of each lower budget's result (compressed) and of the full-budget run's metric at each such
    epoch and at the reference ASHA's rung (prefix) against the full-budget result, per judge."""
    from .sweep.simulate import fidelity

    full = budgets[-1]
    head = "| early result | " + " | ".join(f"rho vs full-budget {JUDGED[j]} [95%] n" for j in judges) + " |"
    lines = [head, "|" + "---|" * (len(judges) + 1)]
    rows = [(f"budget {b} (compressed)", b, True) for b in budgets[:-1]]
    rows += [(f"epoch {e} of {full} (prefix)", e, False) for e in sorted({*budgets[:-1], reference_grace})]
    for text, at, compressed in rows:
        lines.append(f"| {text} | " + " | ".join(fidelity(configurations, at, compressed, full, j).text()
                                                 for j in judges) + " |")
    return "\n".join(lines)


JUDGED = {"val": "validation metric", "test": "test_acc"}


def plot(tables: dict, file: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(tables), figsize=(7 * len(tables), 5), squeeze=False)
    for axes, (judge, results) in zip(axes[0], tables.items()):
        for r in results:  # a legend, not labels at the points: designs of equal cost sit on top of each other
            axes.errorbar(100 * r.share, 100 * r.regret, yerr=[[0], [100 * max(r.regret_high - r.regret, 0)]],
                          fmt="o", capsize=3, label=r.design.label)
        axes.set_xlabel("epochs spent, % of every configuration to the full budget")
        axes.set_ylabel(f"regret, points of full-budget {JUDGED[judge]}\n(mean; bar to the 90th percentile)")
        axes.set_title(f"{title}:\njudged by the full-budget {JUDGED[judge]}", fontsize=9)
        axes.legend(fontsize=7)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(file, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def simulate() -> int:
        from .sweep.simulate import configurations_from_rows, default_designs, judged, parse_design, simulate

        if args.orders < 1 or (args.workers is not None and args.workers < 1):
            raise ValueError("--orders and --workers must be >= 1")
        rows, folder, name = read_rows(args.sweep)
        configurations = configurations_from_rows(rows, args.metric)
        budgets = sorted({b for c in configurations for b in c.curves})
        if not budgets:
            raise ValueError(f"--sweep {args.sweep}: no trial reported an epoch")
        full = budgets[-1]
        whole = [c for c in configurations if full in c.curves]
        if len(whole) < 3:
            raise ValueError(f"--sweep {args.sweep}: {len(whole)} trial(s) have a whole {full}-epoch curve; a replay "
                             f"needs 3 or more (a sweep's full_budget_trials, or benchmarks/fidelity_study.py)")
        reference_grace = args.reference_grace or max(1, full // 2)
        workers = args.workers or max(1, round(len(whole) / 8))
        texts = args.design or default_designs(budgets, reference_grace, workers, len(whole))
        designs = [parse_design(text, budgets) for text in texts]
        out = check_output_folder(args.out or folder or Path("reports") / name, "--out" if args.out else "the folder")
        tested = all(math.isfinite(c.test.get(full, math.nan)) for c in whole)
        if args.judge in ("test", "both") and not tested:
            raise ValueError(f"--judge {args.judge}: not every configuration's full-budget run was tested (a sweep "
                             f"tests its best only): judge by val")
        judge = args.judge or ("both" if tested else "val")
        judges = {"val": ["val"], "test": ["test"], "both": ["val", "test"]}[judge]
        tables = {judge: simulate(whole, designs, workers=workers, orders=args.orders, metric=args.metric,
                                  mode="max" if args.metric == "val_acc" else "min", judge=judge) for judge in judges}
        parts = [f"{len(whole)} configurations with a whole {full}-epoch curve, runs at budgets "
                 f"{', '.join(map(str, budgets))}; {workers} running at once; {args.orders} trial orders; designs "
                 f"decide on {args.metric}.", "",
                 "Rank fidelity (Spearman, 95% interval, n):", "", fidelity_table(whole, budgets, reference_grace, judges)]
        for judge, results in tables.items():
            # the reference ASHA: the first ASHA at its rung (the default list's, with exempt trials)
            reference = next((r for r in results if r.design.kind == "asha" and r.design.options["grace"] == reference_grace),
                             None)
            best = max(whole, key=lambda c: (1 if args.metric == "val_acc" or judge == "test" else -1) * (
                judged(c, full, judge) if math.isfinite(judged(c, full, judge)) else -math.inf)).name
            parts += ["", f"Judged by the full-budget {JUDGED[judge]} (best configuration: {best}):", "",
                      table(results, full, reference)]
        text = "\n".join(parts)
        out.mkdir(parents=True, exist_ok=True)
        (out / "simulation.md").write_text(text + "\n")
        plot(tables, out / "regret-vs-cost.png", f"{name}: {len(whole)} configurations, {args.orders} orders")
        print(text + f"\n\nwritten: {out / 'simulation.md'}, {out / 'regret-vs-cost.png'}")
        return 0

    return run_command(simulate, args.debug)


if __name__ == "__main__":
    sys.exit(main())
