import io
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from gkd_tune.core import data
from gkd_tune import data as data_cli
from gkd_tune.core.data import sources
from gkd_tune.core.data import DataSourceError, DeviceLoader, ImageArrays, load_splits, random_crop_flip


def random_images(n, seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def png_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(path, pixels, labels, label_column="label", names=None, raw=None):
    encoded = raw if raw is not None else [png_bytes(p) for p in pixels]
    images = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(encoded)])
    table = pa.table({"img": images, label_column: pa.array(labels, pa.int64())})
    if names:
        table = table.replace_schema_metadata({"label_names": ",".join(names)})
    pq.write_table(table, path)


# --------------------------------------------------------------------------------------------- sources


def test_parquet_file_roundtrips_pixels_and_labels(tmp_path):
    pixels, labels = random_images(40), np.repeat([0, 1], 20)
    write_parquet(tmp_path / "tiny.parquet", pixels, labels, names=["cat", "dog"])
    decoded, _ = data.load_source(f"parquet:{tmp_path / 'tiny.parquet'}")
    assert decoded.class_names == ("cat", "dog")
    assert decoded.test is None
    np.testing.assert_array_equal(decoded.train.images, pixels.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(decoded.train.labels, labels)


def test_parquet_directory_with_train_and_test_and_fine_labels(tmp_path):
    write_parquet(tmp_path / "train-00000.parquet", random_images(30, 1), np.arange(30) % 3, "fine_label")
    write_parquet(tmp_path / "test-00000.parquet", random_images(9, 2), np.arange(9) % 3, "fine_label")
    splits = load_splits(f"parquet:{tmp_path}", val_fraction=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 9)
    assert splits.class_names == ("0", "1", "2")


def test_larger_images_are_resized_to_32(tmp_path):
    write_parquet(tmp_path / "big.parquet", random_images(4, size=64), [0, 1, 0, 1])
    decoded, _ = data.load_source(f"parquet:{tmp_path / 'big.parquet'}")
    assert decoded.train.images.shape == (4, 3, 32, 32)


def test_shared_cifar10_sample_splits_900_100_per_class(shared_cifar10):
    splits = load_splits(f"parquet:{shared_cifar10}")
    assert splits.num_classes == 10 and splits.class_names[0] == "airplane"
    assert (len(splits.train), len(splits.val)) == (9000, 1000)
    assert np.bincount(splits.train.labels).tolist() == [900] * 10
    assert np.bincount(splits.val.labels).tolist() == [100] * 10
    assert splits.train.images.shape == (9000, 3, 32, 32) and splits.train.images.dtype == np.uint8
    assert 60 < splits.train.images.mean() < 200  # real photos, not blank decodes


def test_imagefolder_train_and_test(tmp_path):
    pixels = random_images(12, 3)
    for i, p in enumerate(pixels):
        split, cls = ("train" if i < 8 else "test"), ("ant" if i % 2 else "bee")
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(tmp_path / split / cls / f"{i:02d}.png")
    decoded, _ = data.load_source(f"imagefolder:{tmp_path}")
    assert decoded.class_names == ("ant", "bee")
    assert (len(decoded.train), len(decoded.test)) == (8, 4)
    # ImageFolder orders by class, then file name: ant = odd indices
    np.testing.assert_array_equal(decoded.train.images[0], pixels[1].transpose(2, 0, 1))
    assert decoded.train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_digits_is_offline_and_32x32_rgb():
    splits = load_splits("digits")
    assert splits.num_classes == 10
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1293, 144, 360)
    assert splits.train.images.shape[1:] == (3, 32, 32)
    assert splits.train.images.max() > 200  # strokes reach near-white after scaling 0..16 -> 0..255


@pytest.mark.parametrize("kind, label_key, meta_name, names_key", [
    ("cifar10", "labels", "batches.meta", "label_names"),
    ("cifar100", "fine_labels", "meta", "fine_label_names"),
])
def test_torchvision_cifar_directory(tmp_path, monkeypatch, kind, label_key, meta_name, names_key):
    from torchvision import datasets
    from torchvision.datasets import cifar

    dataset_class = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    # a tiny directory in torchvision's own format: the checksums of the real archive cannot match it
    monkeypatch.setattr(cifar, "check_integrity", lambda *args: True)
    monkeypatch.setenv("GKD_TUNE_CACHE", str(tmp_path))
    folder = tmp_path / "torchvision" / dataset_class.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [name for name, _ in dataset_class.train_list + dataset_class.test_list]
    written = {}
    for name in files:
        batch = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), label_key: list(range(10))}
        written[name] = batch
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / meta_name).write_bytes(pickle.dumps({names_key: [f"class{i}" for i in range(10)]}))
    decoded, _ = data.load_source(kind)
    assert (len(decoded.train), len(decoded.test)) == (10 * (len(files) - 1), 10)
    assert decoded.class_names[3] == "class3"
    np.testing.assert_array_equal(decoded.train.images[0].reshape(-1), written[files[0]]["data"][0])


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("source, message", [
    ("mnist", "unknown source kind; known: cifar10, cifar100, parquet:PATH"),
    ("parquet:", "needs a path"),
    ("digits:/data", "digits takes no path; sources with one: parquet:PATH, imagefolder:DIR"),
    ("parquet:/does/not/exist.parquet", "no such file or directory"),
    ("imagefolder:/does/not/exist", "no such file or directory"),
])
def test_bad_source_names_the_source(source, message):
    with pytest.raises(DataSourceError, match=f"'{source}'.*{message}"):
        data.load_source(source)


def test_unreadable_image_bytes(tmp_path):
    write_parquet(tmp_path / "bad.parquet", None, [0, 1], raw=[png_bytes(random_images(1)[0]), b"not an image"])
    with pytest.raises(DataSourceError, match="bad.parquet.*cannot decode image 1"):
        data.load_source(f"parquet:{tmp_path / 'bad.parquet'}")


def test_missing_label_column(tmp_path):
    pq.write_table(pa.table({"img": pa.array([{"bytes": b"x", "path": "a"}]), "y": [0]}), tmp_path / "x.parquet")
    with pytest.raises(DataSourceError, match="no label column"):
        data.load_source(f"parquet:{tmp_path / 'x.parquet'}")


def test_imagefolder_without_train_dir(tmp_path):
    with pytest.raises(DataSourceError, match="expected class folders under"):
        data.load_source(f"imagefolder:{tmp_path}")


def test_cli_error_is_one_line(capsys):
    assert data_cli.main(["describe", "parquet:/nope.parquet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data source 'parquet:/nope.parquet'") and err.count("\n") == 1


def test_cli_describe_digits(capsys):
    assert data_cli.main(["describe", "digits"]) == 0
    out = capsys.readouterr().out
    assert "classes    10" in out and "train 1293  val 144  test 360" in out and "cache" in out


# ---------------------------------------------------------------------------------------- splits, cache


def test_split_is_deterministic_and_stratified():
    labels = np.repeat(np.arange(5), [100, 50, 30, 20, 200])
    first = data.stratified_split(labels, 0.1, seed=3)
    again = data.stratified_split(labels, 0.1, seed=3)
    other = data.stratified_split(labels, 0.1, seed=4)
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
    assert np.bincount(labels[first[1]]).tolist() == [10, 5, 3, 2, 20]
    assert len(np.intersect1d(*first)) == 0 and len(first[0]) + len(first[1]) == len(labels)


def test_cache_is_reused_and_invalidated_by_change(tmp_path, monkeypatch):
    path = tmp_path / "c.parquet"
    write_parquet(path, random_images(6), [0, 1, 0, 1, 0, 1])
    _, cache = data.load_source(f"parquet:{path}")
    assert cache.exists()

    def must_not_decode(*args):
        raise AssertionError("decoded again despite a cache")

    monkeypatch.setattr(sources.SOURCES["parquet"], "decode", must_not_decode)
    again, cache_again = data.load_source(f"parquet:{path}")
    assert cache_again == cache and len(again.train) == 6
    write_parquet(path, random_images(8), [0, 1] * 4)  # new content -> new fingerprint -> decoded again
    with pytest.raises(AssertionError, match="decoded again"):
        data.load_source(f"parquet:{path}")


def test_processes_starting_together_decode_a_source_once(tmp_path, monkeypatch):
    """Trials starting together on a fresh node: one decodes (or downloads), the others wait and read the cache."""
    import threading
    import time

    path = tmp_path / "c.parquet"
    write_parquet(path, random_images(6), [0, 1, 0, 1, 0, 1])
    decodes = []
    real_decode = sources.SOURCES["parquet"].decode

    def slow_decode(*args):
        decodes.append(1)
        time.sleep(0.5)  # long enough for the others to find no cache and try too
        return real_decode(*args)

    monkeypatch.setattr(sources.SOURCES["parquet"], "decode", slow_decode)
    results = []
    workers = [threading.Thread(target=lambda: results.append(data.load_source(f"parquet:{path}"))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(decodes) == 1 and len(results) == 3
    assert all(np.array_equal(r[0].train.images, results[0][0].train.images) for r in results)


def test_relative_paths_become_absolute_for_trials_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert data.absolute_source("parquet:data/x.parquet") == f"parquet:{tmp_path}/data/x.parquet"
    assert data.absolute_source("imagefolder:~/pics").startswith("imagefolder:/")
    assert data.absolute_source("cifar10") == "cifar10"


# ---------------------------------------------------------------------------------------------- loader


def test_crops_lie_inside_the_padded_image_and_flips_flip():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 32, 32)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4), mode="reflect")
    out = random_crop_flip(images, 4, torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    offsets, flips = set(), []
    for b in range(len(images)):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.equal(out[b], padded[b, :, dy:dy + 32, dx:dx + 32].flip(2) if flip
                                  else padded[b, :, dy:dy + 32, dx:dx + 32])]
        assert len(matches) == 1, f"image {b} is not one window of its padded image"
        offsets.add(matches[0][:2])
        flips.append(matches[0][2])
    assert 0.2 < np.mean(flips) < 0.8
    assert len(offsets) > 20  # many different crops, not one fixed offset


def test_training_batches_keep_labels_with_images_and_cover_the_epoch():
    n = 200
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 3, 32, 32)).copy()
    labels = np.arange(n) % 7
    loader = DeviceLoader(ImageArrays(images, labels), 32, train=True, mean=(0, 0, 0), std=(1, 1, 1), seed=5)
    seen = []
    for batch, batch_labels in loader:
        index = (batch * 255).round().long()
        assert (index == index[:, :1, :1, :1]).all()  # constant images stay constant under crop and flip
        index = index[:, 0, 0, 0]
        assert torch.equal(batch_labels, index % 7)
        seen += index.tolist()
    assert len(loader) == 6 and len(seen) == 192 and len(set(seen)) == 192
    assert seen != sorted(seen)


def test_eval_batches_are_ordered_normalised_and_complete():
    images = random_images(10).transpose(0, 3, 1, 2).copy()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loader = DeviceLoader(ImageArrays(images, np.arange(10)), 4, train=False, mean=mean, std=std)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    expected = (torch.from_numpy(images).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), expected)


def test_loader_state_restores_the_shuffle():
    arrays = ImageArrays(random_images(50).transpose(0, 3, 1, 2).copy(), np.zeros(50, dtype=np.int64))
    loader = DeviceLoader(arrays, 10, train=True, mean=(0, 0, 0), std=(1, 1, 1), seed=1)
    state = loader.state_dict()
    first = [b[0] for b in loader]
    loader.load_state_dict(state)
    for a, b in zip(first, [b[0] for b in loader]):
        torch.testing.assert_close(a, b)


def test_channel_stats_in_chunks_equal_the_whole_array_in_float():
    from conftest import make_splits

    splits = make_splits(n_train=1000)
    pixels = splits.train.images.astype(np.float64) / 255.0
    expected_mean, expected_std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))
    for chunk in (1, 333, 4096):  # chunks that divide the split, that do not, and one larger than it
        mean, std = splits.channel_stats(chunk=chunk)
        np.testing.assert_allclose(mean, expected_mean, rtol=1e-9)
        np.testing.assert_allclose(std, expected_std, rtol=1e-7)


def test_a_damaged_cache_is_decoded_again(tmp_path):
    path = tmp_path / "c.parquet"
    write_parquet(path, random_images(6), [0, 1, 0, 1, 0, 1])
    first, cache = data.load_source(f"parquet:{path}")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="are damaged"):
        again, _ = data.load_source(f"parquet:{path}")
    assert np.array_equal(again.train.images, first.train.images)
    assert data.load_source(f"parquet:{path}")[0] is not None  # healed: read from the cache again


def test_empty_string_labelled_and_single_class_parquet_are_named(tmp_path):
    pq.write_table(pa.table({"img": pa.array([], pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                             "label": pa.array([], pa.int64())}), tmp_path / "empty.parquet")
    with pytest.raises(DataSourceError, match="empty.parquet has no rows"):
        data.load_source(f"parquet:{tmp_path / 'empty.parquet'}")
    images = pa.array([{"bytes": png_bytes(p), "path": "x.png"} for p in random_images(2)])
    pq.write_table(pa.table({"img": images, "label": pa.array(["cat", "dog"])}), tmp_path / "strings.parquet")
    with pytest.raises(DataSourceError, match=r"labels \('label'\) must be integers, got string"):
        data.load_source(f"parquet:{tmp_path / 'strings.parquet'}")
    write_parquet(tmp_path / "one.parquet", random_images(2), [0, 0])
    with pytest.raises(DataSourceError, match="needs at least 2 distinct labels in its training split, found only 0"):
        data.load_source(f"parquet:{tmp_path / 'one.parquet'}")
    write_parquet(tmp_path / "three.parquet", random_images(3), [3, 3, 3])  # once a 4-class net at val acc 1.0
    with pytest.raises(DataSourceError, match="needs at least 2 distinct labels in its training split, found only 3"):
        data.load_source(f"parquet:{tmp_path / 'three.parquet'}")


def test_a_new_source_kind_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    class Noise(sources.SourceKind):
        usage = "noise"

        def fingerprint(self, source, location, root):
            return ["v1"]

        def decode(self, source, location, root, size=32):
            rng = np.random.default_rng(0)

            def arrays(n):
                return sources.ImageArrays(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), np.arange(n) % 2)

            return sources.DecodedSource(arrays(20), arrays(6), ("heads", "tails"))

    monkeypatch.setitem(sources.SOURCES, "noise", Noise())
    splits = data.load_splits("noise", 0.2, root=tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 6)
    assert splits.class_names == ("heads", "tails") and splits.cache_path.name.startswith("noise-noise-")
    with pytest.raises(DataSourceError, match="noise takes no path"):
        data.load_splits("noise:/x", 0.2, root=tmp_path)


@pytest.mark.parametrize("raised, transient", [
    (lambda: __import__("urllib.error").error.URLError("[Errno -3] Temporary failure in name resolution"), True),
    (lambda: TimeoutError("timed out"), True),
    (lambda: __import__("urllib.error").error.HTTPError("https://x", 503, "Service Unavailable", {}, None), True),
    (lambda: __import__("urllib.error").error.HTTPError("https://x", 404, "Not Found", {}, None), False),
    (lambda: RuntimeError("File not found or corrupted."), False),
])
def test_a_download_that_fails_just_now_is_retried_and_bad_data_is_bad_input(tmp_path, monkeypatch, raised,
                                                                               transient):
    """A transient failure is a TransientDataError (not a ValueError: the trial raises and Tune retries it; the
    teacher's task is retried); anything else stays a DataSourceError, a one-line set-up failure."""
    import torchvision.datasets

    def failing(*args, **kwargs):
        raise raised()

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", failing)
    expected = data.TransientDataError if transient else DataSourceError
    with pytest.raises(expected, match="'cifar10'") as caught:
        sources.decode("cifar10", tmp_path)
    assert isinstance(caught.value, ValueError) != transient
    assert pickle.loads(pickle.dumps(caught.value)).args == caught.value.args  # crosses back from a Ray task


def test_a_source_path_may_start_with_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_parquet(tmp_path / "mine.parquet", random_images(6), [0, 1, 0, 1, 0, 1])
    assert data.parse_source("parquet:~/mine.parquet") == ("parquet", str(tmp_path / "mine.parquet"))
    assert len(data.load_source("parquet:~/mine.parquet", root=tmp_path / "cache")[0].train) == 6


def test_a_cache_write_that_fails_leaves_no_partial_file_and_an_unreadable_cache_is_not_damaged(tmp_path,
                                                                                                monkeypatch):
    import errno

    from gkd_tune.core.data import cache

    path = tmp_path / "c.parquet"
    write_parquet(path, random_images(6), [0, 1, 0, 1, 0, 1])

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(cache.np, "savez", disk_full)
        with pytest.raises(OSError, match="No space left"):
            data.load_source(f"parquet:{path}", root=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.partial"))
    _, cached = data.load_source(f"parquet:{path}", root=tmp_path / "cache")

    def no_permission(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(cached))

    with monkeypatch.context() as patch:
        patch.setattr(cache.np, "load", no_permission)
        with pytest.raises(PermissionError):
            data.load_source(f"parquet:{path}", root=tmp_path / "cache")
    assert cached.exists()  # a good file that could not be read just now is kept


def test_a_source_is_checked_in_seconds_before_anything_starts(tmp_path):
    """data.check_source, which search (--dry-run too) and reproduce run before Ray: what load_splits would find."""
    import time

    folder = tmp_path / "hf"
    folder.mkdir()
    write_parquet(folder / "train-00000.parquet", random_images(40), [0, 1] * 20)
    write_parquet(folder / "test-00000.parquet", random_images(10), [0, 1] * 5)
    write_parquet(folder / "validation-00000.parquet", random_images(10), [0, 1] * 5)
    started = time.monotonic()
    [warning] = data.check_source(f"parquet:{folder}", 0.1)
    assert time.monotonic() - started < 10
    assert "validation-00000.parquet is not used" in warning
    with pytest.raises(DataSourceError, match="no such file or directory"):
        data.check_source(f"parquet:{tmp_path / 'missing.parquet'}", 0.1)
    with pytest.raises(DataSourceError, match="cannot build a stratified 0% validation split"):
        data.check_source(f"parquet:{folder}", 0.001)  # 40 images: not one of each class
    write_parquet(tmp_path / "one.parquet", random_images(4), [2, 2, 2, 2])
    with pytest.raises(DataSourceError, match="needs at least 2 distinct labels"):
        data.check_source(f"parquet:{tmp_path / 'one.parquet'}", 0.5)
    write_parquet(folder / "train-test-mix.parquet", random_images(4), [0, 1, 0, 1])
    with pytest.raises(DataSourceError, match="train-test-mix.parquet: 'train' and 'test' both in the name"):
        data.check_source(f"parquet:{folder}", 0.1)
    broken = tmp_path / "broken"
    broken.mkdir()
    pq.write_table(pa.table({"img": pa.array([{"bytes": b"not an image", "path": "x.png"}] * 4),
                             "label": pa.array([0, 1, 0, 1])}), broken / "train.parquet")
    with pytest.raises(DataSourceError, match="cannot decode image 0"):
        data.check_source(f"parquet:{broken}", 0.5)
    assert data.check_source("digits", 0.1) == []  # decoded when it is used: nothing to read before


def test_images_are_decoded_at_the_data_image_size_and_cached_apart(tmp_path):
    from gkd_tune.core.data import cache_path_for, load_splits

    small, large = (load_splits("digits", 0.1, root=tmp_path, image_size=size) for size in (32, 48))
    assert small.train.images.shape[1:] == (3, 32, 32) and large.train.images.shape[1:] == (3, 48, 48)
    assert large.test.images.shape[1:] == (3, 48, 48) and len(large.train) == len(small.train)
    assert cache_path_for("digits", tmp_path, 48) != cache_path_for("digits", tmp_path, 32) == small.cache_path


def test_the_splits_on_a_gpu_are_refused_up_front_when_they_would_not_fit(monkeypatch):
    import numpy as np
    import torch

    from gkd_tune.core.data import ImageArrays, check_fits

    big = ImageArrays(np.zeros((1000, 3, 64, 64), np.uint8), np.zeros(1000, np.int64))
    assert check_fits({"training": big}, "cpu") == \
        "data: 1,000 training images of 3 x 64 x 64 uint8, 11.7 MiB resident on cpu"
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8 << 20, 80 << 30))  # 8 MiB free
    with pytest.raises(ValueError, match=r"11.7 MiB resident on cuda, but cuda has 0.01 GiB free \(at most 75% of "
                                         r"it for the data\): lower data.image_size"):
        check_fits({"training": big}, "cuda")
