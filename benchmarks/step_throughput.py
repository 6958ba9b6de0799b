"""Images/s of one training step for the `student`, `kd` and `gompertz` methods on whatever device is present.

    python benchmarks/step_throughput.py [--teacher resnet50 --student mobilenet_v2 --batch-size 512]

Random data of CIFAR shape; the step is exactly what the training loop runs (forward_train, backward, SGD step,
bf16 autocast and channels_last on CUDA). Prints a table and the gompertz / kd step-time ratio.
"""

import argparse
import time

import torch

from gkd_tune.distill import DistillConfig, build_distiller
from gkd_tune.models import MODELS, build_model


def step_time(method: str, args, device: torch.device) -> float:
    torch.manual_seed(0)
    teacher = build_model(args.teacher, args.classes)
    distiller = build_distiller(DistillConfig(method=method, feature_mode=args.feature_mode),
                                build_model(args.student, args.classes), teacher).to(device).train()
    if device.type == "cuda":
        distiller.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.randn(args.batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, args.classes, (args.batch_size,), device=device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = distiller.forward_train(images, labels, progress=0.5)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / args.steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="resnet50", choices=list(MODELS))
    parser.add_argument("--student", default="mobilenet_v2", choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=None, help="default 512 on CUDA, 64 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--feature-mode", default="points", choices=["points", "spatial"])
    parser.add_argument("--methods", default="student,kd,gompertz")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (512 if cuda else 64)
    args.steps = args.steps or (50 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"teacher {args.teacher} -> student {args.student}, batch {args.batch_size}, {args.steps} steps, {name}")
    times = {}
    for method in args.methods.split(","):
        times[method] = step_time(method, args, device)
        print(f"{method:<10} {times[method] * 1000:>9.1f} ms/step {args.batch_size / times[method]:>10,.0f} img/s",
              flush=True)
    if "kd" in times and "gompertz" in times:
        print(f"gompertz / kd step-time ratio: {times['gompertz'] / times['kd']:.2f}")


if __name__ == "__main__":
    main()
