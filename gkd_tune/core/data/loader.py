"""The training loader: a whole split resident on the compute device, augmented with tensor ops (airbench's shape)."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from .sources import ImageArrays


def random_crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of each image from its reflect-padded version, then a random horizontal flip.

    images: B x C x H x W float. One gather does both: the flip just reverses the column indices.
    Returns B x C x H x W in channels_last memory layout (a view of the B x H x W x C gather).
    """
    batch, _, height, width = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (batch, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (batch, 1), generator=generator, device=device)
    rows = dy + torch.arange(height, device=device)
    cols = dx + torch.arange(width, device=device)
    flip = torch.rand(batch, 1, generator=generator, device=device) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    b = torch.arange(batch, device=device)[:, None, None]
    return padded[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


# Of a CUDA device's free memory, the share the resident splits may take: the rest is the step's (the model, its
# activations and the optimiser).
RESIDENT_SHARE = 0.75


def resident_bytes(splits: dict[str, ImageArrays]) -> int:
    return sum(arrays.images.nbytes + arrays.labels.nbytes for arrays in splits.values())


def check_fits(splits: dict[str, ImageArrays], device: torch.device | str) -> str:
    """What the splits (by name) a run holds on `device` take there, as a line; on a CUDA device a ValueError when
    they would take more than RESIDENT_SHARE of its free memory, saying how much they need."""
    device = torch.device(device)
    need = resident_bytes(splits)
    first = next(iter(splits.values())).images
    shape = f"{first.shape[1]} x {first.shape[2]} x {first.shape[3]}"
    counts = " + ".join(f"{len(arrays):,} {name}" for name, arrays in splits.items())
    line = f"data: {counts} images of {shape} uint8, {need / 2**20:,.1f} MiB resident on {device}"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > RESIDENT_SHARE * free:
            raise ValueError(f"{line}, but {device} has {free / 2**30:.2f} GiB free (at most "
                             f"{RESIDENT_SHARE:.0%} of it for the data): lower data.image_size, or run on a GPU "
                             f"with more memory")
    return line


class DeviceLoader:
    """Holds a whole split on `device` as uint8 and yields normalised float batches (images, labels).

    With `train=True` batches are shuffled, randomly cropped (pad 4, reflect) and flipped, and the last
    incomplete batch is dropped; otherwise the split is walked in order. No per-image Python anywhere.
    """

    def __init__(
        self,
        arrays: ImageArrays,
        batch_size: int,
        *,
        train: bool,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device | str = "cpu",
        seed: int = 0,
        pad: int = 4,
    ):
        self.device = torch.device(device)
        self.images = torch.from_numpy(arrays.images).to(self.device)
        self.labels = torch.from_numpy(arrays.labels).to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.pad = pad
        # x / 255 then (x - mean) / std, folded into one multiply-add
        std_t = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=self.device).view(1, -1, 1, 1) / std_t
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        if self.train and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = self.images[index].float()
            if self.train:
                images = random_crop_flip(images, self.pad, self.generator)
            yield images * self.scale + self.shift, self.labels[index]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "generator_device": self.device.type}

    def load_state_dict(self, state: dict) -> None:
        """Continues the saved generator exactly on a device of the saved kind. A CUDA generator's state cannot
        drive a CPU generator (or the reverse): a checkpoint taken on a GPU and resumed on a CPU node (or the
        reverse) continues with a generator of this device seeded from the saved state, so that the remaining
        batch orders and augmentations are reproducible from the checkpoint, though not those of an
        uninterrupted run."""
        saved = state["generator"].cpu()
        if state.get("generator_device", self.device.type) == self.device.type:
            self.generator.set_state(saved)
        else:
            self.generator.manual_seed(int.from_bytes(hashlib.sha256(saved.numpy().tobytes()).digest()[:8], "little"))
