"""Images/s of the training step (exactly the loop's `Trainer.train_step`, fed by its device loader).

    python benchmarks/step_throughput.py                  # CUDA: resnet50 -> mobilenet_v2, batch 512
                                                          # CPU:  resnet20 -> resnet8, batch 128 (eager only)
    python benchmarks/step_throughput.py --modes off,on,cudagraphs --packing 1,2,4 --json results.json

Three tables, each also written to --json:
  1. Per compile mode (off = eager, on = torch.compile, cudagraphs = torch.compile + CUDA graphs), the step of
     each variant: the teacher's forward alone, student alone, kd, kd+sinkhorn, kd+grad (gompertz with one term
     switched off), gompertz; and in eager mode the levers switched off: the geomloss Sinkhorn, the autograd
     gradient matching, and both (the step as it was before them). Ratios to the kd step.
  2. Packing: k trial processes sharing the device, each running the gompertz step; aggregate img/s.
  3. Start-up: seconds from a trial process's start to its first finished step (imports, data on the device,
     models built, compiled), cold (the first compilation on this machine) and with the compile cache warm.
Each mode and each packing level runs in fresh processes, so one that fails or hangs is reported and the rest
still runs. Random CIFAR-shaped data (a 50,000-image training split on CUDA).
"""

import time

PROCESS_START = time.perf_counter()  # before torch's import: start-up is measured from here

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import queue  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

IMPORTED = time.perf_counter()

from gkd_tune.core.data import ImageArrays, Splits  # noqa: E402
from gkd_tune.core.distillers import DistillConfig, build_distiller  # noqa: E402
from gkd_tune.core.loop import AUTO_COMPILE, COMPILE_MODES, Trainer, TrainConfig  # noqa: E402
from gkd_tune.core.losses import GradientMatching  # noqa: E402
from gkd_tune.core.models import MODELS, build_model  # noqa: E402
from gkd_tune.core.params import build  # noqa: E402

# name -> (DistillConfig settings by public name, gradient matching by autograd)
SINKHORN_AND_KD, GRAD_AND_KD = {"w_wasserstein": 1.0, "w_grad": 0.0}, {"w_wasserstein": 0.0, "w_grad": 1.0}
VARIANTS = {
    "student": ({"method": "student"}, False),
    "kd": ({"method": "kd"}, False),
    "kd+sinkhorn": (SINKHORN_AND_KD, False),
    "kd+grad": (GRAD_AND_KD, False),
    "gompertz": ({}, False),
    "kd+sinkhorn[geomloss]": ({**SINKHORN_AND_KD, "sinkhorn_solver": "geomloss"}, False),
    "kd+grad[autograd]": (GRAD_AND_KD, True),
    "gompertz[before]": ({"sinkhorn_solver": "geomloss"}, True),
}
TEACHER_FORWARD = "teacher forward"
EAGER_ONLY = ("kd+sinkhorn[geomloss]", "kd+grad[autograd]", "gompertz[before]")


class AutogradGradientMatching(GradientMatching):
    """The gradient matching as it was before the closed form: a backward and a double backward per step."""

    def forward(self, student_map, student_logits, student_head, teacher_map, teacher_head, labels):
        with torch.autocast(student_map.device.type, enabled=False), torch.enable_grad():
            return self.match(*self.autograd_gradients(student_map, student_logits, teacher_map, teacher_head,
                                                       labels))


def describe(error: Exception) -> str:
    first_line = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {first_line}"


def synthetic_splits(images: int, classes: int) -> Splits:
    rng = np.random.default_rng(0)

    def arrays(n):
        return ImageArrays(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % classes)

    return Splits("random", arrays(images), arrays(256), None, tuple(map(str, range(classes))), Path("random.npz"))


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def batches(loader):
    while True:
        yield from loader


def step_runner(trainer: Trainer, variant: str):
    """A function that runs n steps of `variant` (the teacher's forward alone, or the whole training step)."""
    feed = batches(trainer.train_loader)

    def run(n: int) -> float:
        synchronize(trainer.device)
        start = time.perf_counter()
        for _ in range(n):
            if variant == TEACHER_FORWARD:
                with trainer._autocast():
                    trainer.distiller.teacher_outputs(next(feed)[0])
            else:
                trainer.train_step(*next(feed), 0.5)
        synchronize(trainer.device)
        return time.perf_counter() - start

    return run


def shared_data_and_nets(settings: dict) -> tuple[Splits, dict]:
    """The synthetic training split and the teacher and student that a process's trainers share."""
    splits = synthetic_splits(settings["images"], settings["classes"])
    torch.manual_seed(0)
    return splits, {"teacher": build_model(settings["teacher"], settings["classes"]),
                    "student": build_model(settings["student"], settings["classes"])}


def build_trainer(settings: dict, variant: str, mode: str, splits: Splits, nets: dict) -> Trainer:
    """A Trainer for `variant` around the shared teacher and student (compiled once per process)."""
    fields, autograd = VARIANTS[variant]
    config = build(DistillConfig, {"method": "gompertz", "feature_mode": settings["feature_mode"], **fields})
    distiller = build_distiller(config, nets["student"], nets["teacher"])
    if autograd:
        distiller.adapters["grad"].__class__ = AutogradGradientMatching
    return Trainer(distiller, splits, TrainConfig(epochs=1, batch_size=settings["batch_size"], lr=0.01,
                                                  compile=mode))


def measure_mode(settings: dict, mode: str, variants: list[str], results: mp.Queue) -> None:
    """Child process: every variant's step in one compile mode.

    Each variant is built, compiled (its first step) and warmed up; then the variants are timed in turns,
    `rounds` times, and each reports its median: on a shared machine a slow spell hits all variants alike.
    """
    device = torch.device(settings["device"])
    splits, nets = shared_data_and_nets(settings)
    runners, rows = {}, {}
    for variant in variants:
        try:
            trainer = build_trainer(settings, "kd" if variant == TEACHER_FORWARD else variant, mode, splits, nets)
            runners[variant] = step_runner(trainer, variant)
            rows[variant] = {"first_step_s": runners[variant](1)}  # compiles what is not compiled yet
            runners[variant](settings["warmup"])
        except Exception as error:  # noqa: BLE001 - reported in the table, the other variants still run
            runners.pop(variant, None)
            results.put((variant, {"error": describe(error)}))
    if device.type == "cuda":
        rows["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    times = {variant: [] for variant in runners}
    for _ in range(settings["rounds"]):
        for variant, run in runners.items():
            times[variant].append(run(settings["steps"]) / settings["steps"])
    for variant in runners:
        step_s = float(np.median(times[variant]))
        results.put((variant, {**rows[variant], "ms": step_s * 1000, "img_s": settings["batch_size"] / step_s,
                               "rounds_ms": [t * 1000 for t in times[variant]]}))
    results.put(("peak_gib", rows.get("peak_gib")))


def packing_worker(settings: dict, mode: str, seconds: float, barrier, results: mp.Queue) -> None:
    """Child process: one trial's gompertz step, timed over the same wall-clock window as its siblings."""
    try:
        started = time.perf_counter()
        trainer = build_trainer(settings, "gompertz", mode, *shared_data_and_nets(settings))
        built = time.perf_counter()
        run = step_runner(trainer, "gompertz")
        first_step = built + run(1)
        run(settings["warmup"])
        barrier.wait(timeout=600)
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            run(10)  # synchronised every 10 steps: the host runs ahead of the device; keep the window honest
            steps += 10
        elapsed = time.perf_counter() - start
        results.put({"img_s": steps * settings["batch_size"] / elapsed, "steps": steps,
                     "startup_s": first_step - PROCESS_START, "imports_s": IMPORTED - PROCESS_START,
                     "build_s": built - started, "first_step_s": first_step - built})
    except Exception as error:  # noqa: BLE001
        barrier.abort()
        results.put({"error": describe(error)})


def run_mode(context, settings, mode, variants, timeout) -> dict:
    results = context.Queue()
    process = context.Process(target=measure_mode, args=(settings, mode, variants, results), daemon=True)
    process.start()
    rows, deadline = {}, time.perf_counter() + timeout
    while "peak_gib" not in rows:
        try:
            variant, row = results.get(timeout=max(1.0, deadline - time.perf_counter()))
        except queue.Empty:
            break
        rows[variant] = row
        if variant != "peak_gib":
            print_row(mode, variant, row, rows.get("kd"))
    if rows.get("peak_gib"):
        print(f"  {mode:<10} peak GPU memory of all variants together: {rows['peak_gib']:.1f} GiB", flush=True)
    for variant in variants:
        if variant not in rows:
            rows[variant] = {"error": "timed out" if process.is_alive() else f"process exited ({process.exitcode})"}
            print_row(mode, variant, rows[variant], None)
    process.join(5)
    if process.is_alive():
        process.kill()
    return rows


def run_packing(context, settings, mode, k, seconds, timeout) -> dict:
    results, barrier = context.Queue(), context.Barrier(k)
    workers = [context.Process(target=packing_worker, args=(settings, mode, seconds, barrier, results), daemon=True)
               for _ in range(k)]
    for worker in workers:
        worker.start()
    rows = []
    deadline = time.perf_counter() + timeout
    for _ in range(k):
        try:
            rows.append(results.get(timeout=max(1.0, deadline - time.perf_counter())))
        except queue.Empty:
            rows.append({"error": "timed out"})
    for worker in workers:
        worker.join(5)
        if worker.is_alive():
            worker.kill()
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        return {"error": errors[0]}
    return {"aggregate_img_s": sum(r["img_s"] for r in rows), "workers": rows}


def print_row(mode, variant, row, kd_row):
    if "error" in row:
        print(f"  {mode:<10} {variant:<22} failed: {row['error']}", flush=True)
        return
    ratio = ""
    if kd_row and "ms" in kd_row and variant not in ("kd", TEACHER_FORWARD):
        ratio = f"{row['ms'] / kd_row['ms']:>6.2f}x kd"
    spread = f"(rounds {min(row['rounds_ms']):.1f}-{max(row['rounds_ms']):.1f})" if len(row["rounds_ms"]) > 1 else ""
    print(f"  {mode:<10} {variant:<22} {row['ms']:>8.1f} ms {row['img_s']:>9,.0f} img/s  {ratio:<10} "
          f"first step {row['first_step_s']:5.1f}s {spread}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--teacher", default="resnet50" if cuda else "resnet20", choices=list(MODELS))
    parser.add_argument("--student", default="mobilenet_v2" if cuda else "resnet8", choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=512 if cuda else 128)
    parser.add_argument("--steps", type=int, default=30 if cuda else 4, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=5 if cuda else 1, help="untimed steps after the first")
    parser.add_argument("--rounds", type=int, default=1 if cuda else 5,
                        help="timed turns per variant, interleaved; the median is reported")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images", type=int, default=50_000 if cuda else 4096, help="training images on device")
    parser.add_argument("--feature-mode", default="points", choices=["points", "spatial"])
    parser.add_argument("--modes", default="off,on,cudagraphs" if cuda else "off",
                        help=f"compile modes, from: {', '.join(m for m in COMPILE_MODES if m != 'auto')}")
    parser.add_argument("--variants", default=",".join([TEACHER_FORWARD, *VARIANTS]),
                        help="step variants (those that switch a lever off run in eager mode only)")
    parser.add_argument("--compiled-variants", default=f"{TEACHER_FORWARD},student,kd,kd+sinkhorn,kd+grad,gompertz",
                        help="variants measured in the compiled modes")
    parser.add_argument("--packing", default="1,2,4" if cuda else "", help="trial processes per device")
    parser.add_argument("--packing-mode", default=AUTO_COMPILE, choices=[m for m in COMPILE_MODES if m != "auto"],
                        help="compile mode of the packed trials (default: what trials use on a GPU)")
    parser.add_argument("--packing-seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mode or packing level")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()

    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()})"
    settings = {"device": device, "teacher": args.teacher, "student": args.student, "batch_size": args.batch_size,
                "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "classes": args.classes,
                "images": args.images, "feature_mode": args.feature_mode}
    report = {"device": name, "torch": torch.__version__, "python": sys.version.split()[0],
              "threads": torch.get_num_threads(), "settings": settings, "modes": {}, "packing": {}}
    print(f"{args.teacher} -> {args.student}, batch {args.batch_size}, {args.feature_mode} mode, {args.rounds} x "
          f"{args.steps} timed steps, {name}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    def save():
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1))

    context = mp.get_context("spawn")
    for mode in [m for m in args.modes.split(",") if m]:
        wanted = args.variants.split(",") if mode == "off" else args.compiled_variants.split(",")
        wanted = [v for v in wanted if v == TEACHER_FORWARD or v in VARIANTS]
        if mode != "off":
            wanted = [v for v in wanted if v not in EAGER_ONLY]
        print(f"compile mode {mode}:", flush=True)
        report["modes"][mode] = run_mode(context, settings, mode, wanted, args.timeout)
        rows = report["modes"][mode]
        for name_, reference in (("gompertz", "kd"), ("gompertz[before]", "kd")):
            if "ms" in rows.get(name_, {}) and "ms" in rows.get(reference, {}):
                report["modes"][mode][f"ratio {name_} / {reference}"] = rows[name_]["ms"] / rows[reference]["ms"]
                print(f"  {mode:<10} {name_} / {reference} step-time ratio: "
                      f"{rows[name_]['ms'] / rows[reference]['ms']:.2f}", flush=True)
        save()

    levels = [int(k) for k in args.packing.split(",") if k]
    if levels:
        print(f"packing (gompertz step, compile {args.packing_mode}, {args.packing_seconds:.0f} s window):", flush=True)
    for k in levels:
        row = run_packing(context, settings, args.packing_mode, k, args.packing_seconds, args.timeout)
        report["packing"][str(k)] = row
        if "error" in row:
            print(f"  {k} trial(s): failed: {row['error']}", flush=True)
        else:
            single = report["packing"].get("1", {}).get("aggregate_img_s")
            gain = f"  {row['aggregate_img_s'] / single:.2f}x one trial" if single and k > 1 else ""
            startup = ", ".join(f"{w['startup_s']:.1f}" for w in row["workers"])
            print(f"  {k} trial(s): {row['aggregate_img_s']:>9,.0f} img/s in all{gain}  (start-up s: {startup})",
                  flush=True)
        save()
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
