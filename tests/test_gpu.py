"""The CUDA paths: run by benchmarks/gpu_check.sh on a machine with a GPU, skipped everywhere else.

bf16 autocast, channels_last, the device loader on CUDA, the compiled step (inductor, and with CUDA graphs), the
closed-form gradient matching and the torch Sinkhorn against their references on CUDA, and two real epochs.
"""

import time

import numpy as np
import pytest
import torch
from conftest import make_splits

from gkd_tune.core.data import DeviceLoader, ImageArrays, load_splits
from gkd_tune.core.distillers import DistillConfig, StudentOnly, build_distiller
from gkd_tune.core.loop import Trainer, TrainConfig
from gkd_tune.core.losses import FeatureWasserstein, GradientMatching
from gkd_tune.core.models import build_model
from gkd_tune.core.params import build

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def gompertz_trainer(splits, compile="off", seed=0, batch_size=32, epochs=2, student="resnet8", **distill):
    torch.manual_seed(seed)
    teacher = build_model("resnet14", splits.num_classes)
    distiller = build_distiller(build(DistillConfig, distill), build_model(student, splits.num_classes), teacher)
    return Trainer(distiller, splits, TrainConfig(epochs=epochs, batch_size=batch_size, compile=compile), CUDA)


def test_step_runs_in_bf16_with_channels_last_weights_and_float32_losses():
    trainer = gompertz_trainer(make_splits(n_train=64, classes=4))
    assert trainer.compile_mode == "off"
    conv = trainer.distiller.student.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images, labels = next(iter(trainer.train_loader))
    assert images.is_cuda and images.is_contiguous(memory_format=torch.channels_last)
    with trainer._autocast():
        feature_map, logits = trainer.distiller.student(images)
    assert logits.dtype == torch.bfloat16 and feature_map.dtype == torch.bfloat16
    before = conv.weight.detach().clone()
    out = trainer.train_step(images, labels, 0.5)
    # the Sinkhorn and gradient terms run in float32 outside autocast; KD and CE follow autocast's rules
    assert out.terms["wasserstein"].dtype == torch.float32 and out.terms["grad"].dtype == torch.float32
    assert all(torch.isfinite(v) for v in out.terms.values())
    assert not torch.equal(before, conv.weight)


def test_device_loader_on_cuda_matches_the_cpu_normalisation_and_is_seeded():
    rng = np.random.default_rng(0)
    arrays = ImageArrays(rng.integers(0, 256, (50, 3, 32, 32), dtype=np.uint8), np.arange(50) % 5)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    on_cpu = DeviceLoader(arrays, 16, train=False, mean=mean, std=std)
    on_cuda = DeviceLoader(arrays, 16, train=False, mean=mean, std=std, device=CUDA)
    for (cpu_images, cpu_labels), (cuda_images, cuda_labels) in zip(on_cpu, on_cuda):
        assert cuda_images.is_cuda
        torch.testing.assert_close(cuda_images.cpu(), cpu_images)
        assert torch.equal(cuda_labels.cpu(), cpu_labels)
    first, second = (DeviceLoader(arrays, 16, train=True, mean=mean, std=std, device=CUDA, seed=3) for _ in range(2))
    for (a, la), (b, lb) in zip(first, second):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert len(first) == 3  # the short last batch is dropped in training


class OpaqueHead(torch.nn.Module):
    """The same head in a shape the closed form does not recognise: forces the autograd path."""

    def __init__(self, head):
        super().__init__()
        self.inner = head

    def forward(self, feature_map):
        return self.inner(feature_map)


def relative_error(got, expected):
    return ((got - expected).norm() / expected.norm()).item()


def test_closed_form_gradient_matching_equals_autograd_on_cuda():
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", 10).to(CUDA), build_model("resnet14", 10).to(CUDA).eval()
    images, labels = torch.randn(64, 3, 32, 32, device=CUDA), torch.randint(0, 10, (64,), device=CUDA)
    results = []
    for wrap in (lambda head: head, OpaqueHead):
        matching = GradientMatching(64, 64, r=0.3).to(CUDA)
        torch.manual_seed(1)
        torch.nn.init.normal_(matching.remap.weight)
        student.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            student_map, logits = student(images)
            with torch.no_grad():
                teacher_map, _ = teacher(images)
            value = matching(student_map, logits, wrap(student.head), teacher_map, wrap(teacher.head), labels)
        value.backward()
        results.append((value.detach(), student.head[2].weight.grad.clone(), matching.remap.weight.grad.clone(),
                        student.features[0].weight.grad.clone()))
    for closed, autograd in zip(*results):
        # the autograd path differentiates bf16 maps (autocast), and the first conv's gradient passes through the
        # whole bf16 network: they agree to bf16 precision
        assert relative_error(closed, autograd) < 5e-2


@pytest.mark.parametrize("mode", ["points", "spatial"])
def test_torch_sinkhorn_equals_geomloss_on_cuda(mode):
    torch.manual_seed(0)
    student_map = torch.randn(32, 16, 4, 4, device=CUDA, requires_grad=True)
    teacher_map = torch.randn(32, 32, 4, 4, device=CUDA)
    results = {}
    for solver in ("geomloss", "torch"):
        torch.manual_seed(1)
        loss = FeatureWasserstein(16, 32, mode, solver=solver).to(CUDA)
        value = loss(student_map, teacher_map)
        results[solver] = (value, *torch.autograd.grad(value, [student_map, loss.adapter.weight]))
    for ours, reference in zip(results["torch"], results["geomloss"]):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["on", "cudagraphs"])
def test_compiled_step_matches_eager_and_keeps_checkpoints_interchangeable(mode, tmp_path):
    splits = make_splits(n_train=128, n_val=64, classes=4)
    eager, compiled = gompertz_trainer(splits, "off", epochs=2), gompertz_trainer(splits, mode, epochs=2)
    assert compiled.compile_mode == mode
    batch = next(iter(eager.train_loader))
    losses = []
    for trainer in (eager, compiled):
        steps = [trainer.train_step(*batch, 0.5).total.item() for _ in range(3)]
        losses.append(steps)
    # the same weights, batch and step: bf16 kernels fused differently agree to bf16 rounding
    np.testing.assert_allclose(losses[1], losses[0], rtol=5e-2)
    history = compiled.run()
    assert all(np.isfinite(h["loss_total"]) for h in history)
    compiled.save(tmp_path / "compiled.pt")
    eager.load(tmp_path / "compiled.pt")  # no "_orig_mod." prefixes: compiled in place
    assert eager.epoch == compiled.epoch


def test_two_epochs_on_the_real_cifar10_sample(shared_cifar10, capsys):
    """resnet14 teacher (3 epochs) then a compiled gompertz resnet8 student (2 epochs) on 9,000 real images."""
    splits = load_splits(f"parquet:{shared_cifar10}", val_fraction=0.1)
    torch.manual_seed(0)
    teacher = build_model("resnet14", 10)
    start = time.perf_counter()
    teacher_history = Trainer(StudentOnly(teacher), splits, TrainConfig(epochs=3, batch_size=256, lr=0.2)).run()
    teacher_s = time.perf_counter() - start
    torch.manual_seed(0)
    start = time.perf_counter()
    trainer = Trainer(build_distiller(DistillConfig(), build_model("resnet8", 10), teacher), splits,
                      TrainConfig(epochs=2, batch_size=256, lr=0.2))
    assert trainer.compile_mode != "off"  # auto compiles on CUDA
    history = trainer.run()
    student_s = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n  teacher val acc {[round(h['val_acc'], 3) for h in teacher_history]} in {teacher_s:.1f} s; "
              f"gompertz student val acc {[round(h['val_acc'], 3) for h in history]}, "
              f"{[round(h['images_per_s']) for h in history]} img/s, {student_s:.1f} s with compilation")
    assert teacher_history[-1]["val_acc"] > 0.3
    assert history[-1]["val_acc"] > 0.25 and history[-1]["loss_ce"] < history[0]["loss_ce"]


def test_a_gpu_checkpoint_continues_on_a_cpu_node(tmp_path):
    """A trial retried on a node without a GPU: the CUDA generator's state seeds a CPU generator (loop docs)."""
    splits = make_splits(n_train=64, n_val=32, classes=4)
    on_gpu = gompertz_trainer(splits, "off", epochs=2)
    on_gpu.train_epoch()
    on_gpu.save(tmp_path / "gpu.pt")
    torch.manual_seed(0)
    on_cpu = Trainer(build_distiller(DistillConfig(), build_model("resnet8", 4), build_model("resnet14", 4)), splits,
                     TrainConfig(epochs=2, batch_size=32, compile="off"), torch.device("cpu"))
    on_cpu.load(tmp_path / "gpu.pt")
    [metrics] = on_cpu.run()
    assert on_cpu.epoch == 2 and np.isfinite(metrics["loss_total"])


def test_a_student_predicts_on_the_device_it_is_on(tmp_path):
    from gkd_tune.core.models import load_student, save_model

    splits = make_splits(n_train=64, n_val=32, classes=4)
    trainer = gompertz_trainer(splits, "off", epochs=1)
    trainer.run()
    save_model(tmp_path / "student.pt", trainer.distiller.student.cpu(), val_acc=0.0, epoch=1, **trainer.input_card)
    student = load_student(tmp_path / "student.pt")
    on_cpu = student.predict(splits.val.images)
    student.net.to(CUDA)
    on_gpu = student.predict(splits.val.images)
    assert on_gpu.device.type == "cpu" and (on_gpu == on_cpu).float().mean() > 0.9
