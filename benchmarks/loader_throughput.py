"""Images/s of gkd-tune's on-device loader next to a torchvision DataLoader doing the same augmentation.

Both produce shuffled, normalised batches with a random crop (pad 4, reflect) and a horizontal flip; the
torchvision side is the usual CIFAR recipe (PIL images, transforms per image, worker processes).

    python benchmarks/loader_throughput.py [--source parquet:../shared/data/cifar10/train-10k.parquet]
"""

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from gkd_tune.core.data import DeviceLoader, load_splits


class PILDataset(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images = images.transpose(0, 2, 3, 1)  # N x H x W x C, as torchvision's CIFAR10 keeps them
        self.labels = labels
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def images_per_second(batches, epochs: int, device: torch.device) -> float:
    for _ in batches:  # warm-up epoch: worker start-up, allocator, first-touch
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            count += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="parquet:../shared/data/cifar10/train-10k.parquet")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    splits = load_splits(args.source)
    mean, std = splits.channel_stats()
    on_device = DeviceLoader(splits.train, args.batch_size, train=True, mean=mean, std=std, device=device)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    torchvision_loader = DataLoader(
        PILDataset(splits.train.images, splits.train.labels, transform), args.batch_size, shuffle=True,
        drop_last=True, num_workers=args.workers, persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
    )
    print(f"{args.source}: {len(splits.train)} training images, batch {args.batch_size}, device {device}, "
          f"{torch.get_num_threads()} threads")
    rows = [
        ("gkd_tune DeviceLoader", images_per_second(on_device, args.epochs, device)),
        (f"torchvision DataLoader ({args.workers} workers)", images_per_second(torchvision_loader, args.epochs, device)),
    ]
    for name, rate in rows:
        print(f"{name:<40} {rate:>12,.0f} img/s")
    print(f"speed-up: {rows[0][1] / rows[1][1]:.1f}x")


if __name__ == "__main__":
    main()
