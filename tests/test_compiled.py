"""The GPU's default path where a CPU can take it: the compiled step (inductor on the CPU), fp16 loss scaling, a
checkpoint taken on another kind of device, and the torch versions the code admits. The CUDA-only parts (CUDA
graphs, bf16, fused SGD) are in test_gpu.py, run by benchmarks/gpu_check.sh."""

from types import SimpleNamespace

import pytest
import torch

from conftest import make_splits
from gkd_tune.core import loop
from gkd_tune.core.data import DeviceLoader
from gkd_tune.core.distillers import DistillConfig, build_distiller
from gkd_tune.core.distillers.base import RECOMPILE_LIMIT, raise_recompile_limit
from gkd_tune.core.loop import Trainer, TrainConfig
from gkd_tune.core.models import build_model

# Inductor's CPU kernels reorder float sums: the compiled losses equal the eager ones to this relative tolerance
# (measured: about 1e-6 after two epochs).
COMPILED_RTOL = 1e-4


def gompertz_trainer(splits, compile: str, epochs: int = 2) -> Trainer:
    torch.manual_seed(0)
    distiller = build_distiller(DistillConfig(), build_model("resnet8", 3), build_model("resnet8", 3))
    return Trainer(distiller, splits, TrainConfig(epochs=epochs, batch_size=16, lr=0.01, compile=compile))


def losses(history: list[dict]) -> list[float]:
    return [row[key] for row in history for key in sorted(row) if key.startswith("loss_") or key == "val_loss"]


@pytest.mark.slow
def test_the_compiled_gompertz_step_equals_eager_and_resumes_from_its_own_checkpoint(tmp_path):
    """compile_step in place (the checkpoint keys stay eager's), two compiled trainers in one process (the
    recompile limit), and a compiled run resumed from its checkpoint continues exactly. About 45 s on 2 cores with
    a cold compile cache."""
    splits = make_splits(n_train=32, n_val=16, classes=3)
    eager = gompertz_trainer(splits, "off")
    eager.run()
    eager.save(tmp_path / "eager.pt")

    compiled = gompertz_trainer(splits, "on")
    assert compiled.compile_mode == "on"
    compiled.run(lambda metrics, trainer: trainer.save(tmp_path / "epoch1.pt") if metrics["epoch"] == 1 else None)
    assert losses(compiled.history) == pytest.approx(losses(eager.history), rel=COMPILED_RTOL)
    parts = [compiled.distiller.student, compiled.distiller.teacher, *compiled.distiller.adapters.values()]
    assert all(getattr(part, "_compiled_call_impl", None) is not None for part in parts)

    def keys(state: dict) -> dict:
        return {name: sorted(value) if isinstance(value, dict) else None for name, value in state.items()}

    compiled.save(tmp_path / "compiled.pt")
    assert keys(torch.load(tmp_path / "compiled.pt", weights_only=True)) == \
        keys(torch.load(tmp_path / "eager.pt", weights_only=True))

    resumed = gompertz_trainer(splits, "on")  # a second compiled trainer in this process
    resumed.load(tmp_path / "epoch1.pt")
    resumed.run()
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT
    assert losses(resumed.history[1:]) == losses(compiled.history[1:])  # the same compiled step, resumed exactly


def test_the_recompile_limit_is_raised_under_its_name_in_every_admitted_torch():
    current = SimpleNamespace(recompile_limit=8, cache_size_limit=8)  # torch >= 2.7 (and an alias, later)
    raise_recompile_limit(current)
    assert current.recompile_limit == RECOMPILE_LIMIT
    before_2_7 = SimpleNamespace(cache_size_limit=8)
    raise_recompile_limit(before_2_7)
    assert before_2_7.cache_size_limit == RECOMPILE_LIMIT
    higher = SimpleNamespace(recompile_limit=128)
    raise_recompile_limit(higher)
    assert higher.recompile_limit == 128


def test_fp16_training_scales_its_loss_and_keeps_the_scale_in_its_checkpoint(tiny_splits, tmp_path, monkeypatch):
    """What a GPU without bf16 (before Ampere) runs: fp16 autocast with a GradScaler; here on the CPU."""
    monkeypatch.setattr(loop, "amp_dtype", lambda device: torch.float16)
    trainer = gompertz_trainer(tiny_splits, "off", epochs=1)
    assert trainer.scaler.is_enabled()
    [metrics] = trainer.run()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("loss_"))
    trainer.save(tmp_path / "fp16.pt")
    state = torch.load(tmp_path / "fp16.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0
    resumed = gompertz_trainer(tiny_splits, "off", epochs=1)
    resumed.load(tmp_path / "fp16.pt")
    assert resumed.scaler.get_scale() == trainer.scaler.get_scale()
    monkeypatch.undo()
    assert not gompertz_trainer(tiny_splits, "off", epochs=1).scaler.is_enabled()  # float32 on the CPU: no scaling


def test_a_gpu_checkpoint_continues_on_a_cpu_with_a_generator_seeded_from_it(tiny_splits):
    """A CUDA generator's state (16 bytes: seed, offset) cannot drive a CPU generator: the loader seeds its own from
    it, the same way every time."""
    gpu_state = {"generator": torch.arange(16, dtype=torch.uint8), "generator_device": "cuda"}

    def first_batch_order() -> torch.Tensor:
        loader = DeviceLoader(tiny_splits.train, 16, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3)
        loader.load_state_dict(gpu_state)
        return next(iter(loader))[1]

    assert torch.equal(first_batch_order(), first_batch_order())
    other = {"generator": torch.arange(1, 17, dtype=torch.uint8), "generator_device": "cuda"}
    loader = DeviceLoader(tiny_splits.train, 16, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3)
    loader.load_state_dict(other)
    assert not torch.equal(next(iter(loader))[1], first_batch_order())
