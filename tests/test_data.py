"""Loaders on small files written here in the real formats; corrupt files; downloads."""

import dataclasses
import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch

from gxnor_cli.data import sources
from gxnor_cli.data.splits import augment
from gxnor_cli.config import DataConfig
from gxnor_cli.data.sources import load_data
from gxnor_cli.data.splits import batches, DataError


def write_idx(path, array, compress=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)


def make_idx_dataset(root, n_train=40, n_test=12, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        labels[:10] = np.arange(10)
        suffix = ".gz" if compress else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip_and_scaling(tmp_path, compress):
    arrays = make_idx_dataset(tmp_path / "m", compress=compress)
    ds = load_data(DataConfig("mnist", root=str(tmp_path / "m")), val_fraction=0.25, seed=1)
    assert ds.shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.train) + len(ds.val) == 40 and len(ds.val) == 10 and len(ds.test) == 12
    assert torch.equal(ds.test.images[:, 0], torch.from_numpy(arrays["t10k"][0]))
    x, y = next(batches(ds.test, 5, ds.max_value))
    expected = torch.from_numpy(arrays["t10k"][0][:5]).float() / 127.5 - 1
    assert torch.allclose(x[:, 0], expected, atol=1e-6) and x.min() >= -1 and x.max() <= 1
    assert y.tolist() == arrays["t10k"][1][:5].tolist()


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    make_idx_dataset(tmp_path / "m")
    a = load_data(DataConfig("mnist", root=str(tmp_path / "m")), val_fraction=0.25, seed=3)
    b = load_data(DataConfig("mnist", root=str(tmp_path / "m")), val_fraction=0.25, seed=3)
    c = load_data(DataConfig("mnist", root=str(tmp_path / "m")), val_fraction=0.25, seed=4)
    assert torch.equal(a.val.images, b.val.images) and not torch.equal(a.val.images, c.val.images)
    rows = lambda s: {bytes(r.numpy()) for r in s.images}
    assert not rows(a.val) & rows(a.train)


def test_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_data(DataConfig("mnist", root=str(tmp_path / "empty")))


@pytest.mark.parametrize("damage", ["magic", "truncate", "badgzip", "mismatch"])
def test_corrupt_idx_is_refused(tmp_path, damage):
    root = tmp_path / "m"
    make_idx_dataset(root, compress=False)
    target = root / "train-images-idx3-ubyte"
    raw = target.read_bytes()
    if damage == "magic":
        target.write_bytes(b"\x01\x02" + raw[2:])
    elif damage == "truncate":
        target.write_bytes(raw[:-100])
    elif damage == "badgzip":
        target.unlink()
        (root / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    else:
        write_idx(root / "train-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match="corrupt"):
        load_data(DataConfig("mnist", root=str(root)))


def test_fashion_mnist_found_in_debian_location(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "deb")
    debian = dataclasses.replace(sources.DATASETS["fashion_mnist"], fallback=tmp_path / "deb")
    monkeypatch.setitem(sources.DATASETS._items, "fashion_mnist", debian)
    monkeypatch.chdir(tmp_path)
    assert len(load_data(DataConfig("fashion_mnist")).test) == 12


def write_cifar_python(root, n=6, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches_ = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        labels[0] = 9
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, handle, protocol=2)
        batches_[name] = (data, labels)
    return batches_


def test_cifar10_python_batches(tmp_path):
    written = write_cifar_python(tmp_path / "c")
    ds = load_data(DataConfig("cifar10", root=str(tmp_path / "c")), val_fraction=0.2)
    assert ds.shape == (3, 32, 32) and len(ds.train) + len(ds.val) == 30 and len(ds.test) == 6
    data, labels = written["test_batch"]
    assert torch.equal(ds.test.images.reshape(6, -1), torch.from_numpy(data))
    assert ds.test.labels.tolist() == labels


def test_cifar10_binary_batches(tmp_path):
    folder = tmp_path / "c" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rows = rng.integers(0, 256, (4, 3073), dtype=np.uint8)
        rows[:, 0] %= 10
        rows[0, 0] = 9
        rows.tofile(folder / name)
    ds = load_data(DataConfig("cifar10", root=str(tmp_path / "c")))
    assert len(ds.test) == 4 and ds.test.labels[0] == 9


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path):
    write_cifar_python(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(tmp_path / "c" / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({b"data": Evil(), b"labels": [1]}, handle, protocol=2)
    with pytest.raises(DataError, match="refusing to load .*print"):
        load_data(DataConfig("cifar10", root=str(tmp_path / "c")))


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    root = tmp_path / "s"
    root.mkdir()
    for name, n in (("train_32x32.mat", 20), ("test_32x32.mat", 7)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10
        savemat(root / name, {"X": x, "y": y})
        if n == 7:
            test_x = x
    ds = load_data(DataConfig("svhn", root=str(root)))
    assert ds.shape == (3, 32, 32) and len(ds.test) == 7
    assert ds.test.labels[0] == 0  # SVHN stores digit 0 as label 10
    assert torch.equal(ds.test.images[3], torch.from_numpy(test_x[..., 3]).permute(2, 0, 1))
    (root / "test_32x32.mat").write_bytes(b"MATLAB 5.0 but not really")
    with pytest.raises(DataError, match="corrupt SVHN"):
        load_data(DataConfig("svhn", root=str(root)))


def test_download_verifies_checksum_and_writes_atomically(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    make_idx_dataset(source)
    urls = [((source / f"{f}.gz").as_uri(), hashlib.md5((source / f"{f}.gz").read_bytes()).hexdigest())
            for f in sources.IDX_FILES]
    monkeypatch.setitem(sources.DOWNLOADS, "mnist", urls)
    ds = load_data(DataConfig("mnist", root=str(tmp_path / "dl"), download=True))
    assert len(ds.test) == 12
    assert not list((tmp_path / "dl").glob("*.part"))
    bad = [(u, "0" * 32) for u, _ in urls]
    monkeypatch.setitem(sources.DOWNLOADS, "mnist", bad)
    with pytest.raises(DataError, match="checksum mismatch"):
        load_data(DataConfig("mnist", root=str(tmp_path / "dl2"), download=True))
    assert not list((tmp_path / "dl2").glob("*"))  # nothing half-written is left
    monkeypatch.setitem(sources.DOWNLOADS, "mnist", [((tmp_path / "nope.gz").as_uri(), "0" * 32)] * 4)
    with pytest.raises(DataError, match="could not download"):
        load_data(DataConfig("mnist", root=str(tmp_path / "dl3"), download=True))


def test_digits_is_embedded_with_fixed_test_split():
    a = load_data(DataConfig("digits"), seed=0)
    b = load_data(DataConfig("digits"), seed=5)
    assert a.shape == (1, 8, 8) and a.num_classes == 10 and a.max_value == 16.0
    assert torch.equal(a.test.images, b.test.images)  # test never depends on the run's seed
    assert len(a.train) + len(a.val) + len(a.test) == 1797


def test_augment_keeps_shape_and_content_shifts():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).reshape(2, 3, 8, 8)
    out = augment(x, g, pad=2)
    assert out.shape == x.shape
    # every output row is a (possibly flipped) window of the zero-padded input
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        found = any(torch.equal(out[i], cand) for dy in range(5) for dx in range(5)
                    for cand in (padded[i, :, dy:dy + 8, dx:dx + 8], padded[i, :, dy:dy + 8, dx:dx + 8].flip(2)))
        assert found


@pytest.mark.parametrize("n, seed", [(1797, 0), (60000, 0), (54000, 3), (10, 5), (2, 1), (1, 0), (0, 0)])
def test_numpy_randperm_is_torch_randperm(n, seed):
    """The splits are read without torch: the permutation must be torch's, element for element."""
    import torch

    from gxnor_cli.data.splits import randperm

    want = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    assert np.array_equal(randperm(n, seed), want)


def test_the_arrays_and_the_tensors_hold_the_same_splits():
    from gxnor_cli.config import DataConfig
    from gxnor_cli.data.sources import load_data, read_arrays

    arrays, tensors = read_arrays("digits", val_fraction=0.2, seed=4), load_data(DataConfig("digits"), 0.2, 4)
    for name in ("train", "val", "test"):
        a, t = arrays.split(name), tensors.split(name)
        assert isinstance(a.images, np.ndarray) and np.array_equal(a.images, t.images.numpy())
        assert np.array_equal(a.labels, t.labels.numpy()) and t.labels.dtype == torch.int64


def test_the_digits_csv_reader_matches_numpy_loadtxt_and_refuses_what_is_not_integers():
    import importlib.util
    from pathlib import Path

    from gxnor_cli.data.sources import small_ints_csv

    path = Path(list(importlib.util.find_spec("sklearn").submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    assert np.array_equal(small_ints_csv(gzip.decompress(path.read_bytes()), 65),
                          np.loadtxt(path, delimiter=",", dtype=np.float32))
    assert small_ints_csv(b"10,2\n3,456", 2).tolist() == [[10, 2], [3, 456]]  # no newline at the end
    for bad in (b"1,2\n3,x\n", b"1,-2\n", b"1.5,2\n", b"1,2,3\n", b""):
        with pytest.raises(ValueError):
            small_ints_csv(bad, 2)
