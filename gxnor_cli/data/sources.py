"""Where datasets come from: each a registered reader of its standard files.

Formats read (each from its standard files in ``data.root``):

    digits          scikit-learn's 8x8 digits (ships with scikit-learn, offline)
    mnist, fashion_mnist   IDX files, plain or .gz (train-images-idx3-ubyte[.gz], ...)
    cifar10         python batches (cifar-10-batches-py/, read with an unpickler that
                    only rebuilds numpy arrays) or binary batches (cifar-10-batches-bin/)
    svhn            train_32x32.mat, test_32x32.mat (MATLAB v5, read with scipy)

Missing files are downloaded when ``data.download=true`` (checksums verified, written
atomically); otherwise, and for corrupt files, a :class:`DataError` names what was
expected and where.  Everything here is numpy: :func:`read_arrays` gives the splits as
arrays (what the packed engine needs), :func:`load_data` the same as torch tensors.

A dataset is one decorated reader: ``@source("name")`` on a function
``read(roots, download) -> (train Split, test Split)``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import os
import pickle
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..registry import Registry
from .splits import DataError, Dataset, Split, randperm

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# (url, md5) of the canonical files, as published by each dataset's authors.
DOWNLOADS: dict[str, list[tuple[str, str]]] = {
    "mnist": [(f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}.gz", md5) for f, md5 in zip(IDX_FILES, (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))],
    "fashion_mnist": [(f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{f}.gz", md5)
                      for f, md5 in zip(IDX_FILES, (
                          "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                          "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))],
    "cifar10": [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")],
    "svhn": [("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
             ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")],
}


# -- files ---------------------------------------------------------------------------
def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, md5: str, dest: Path) -> Path:
    """Fetch ``url`` to ``dest`` (atomically: a .part file renamed once its md5 matches)."""
    import urllib.error
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as err:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {url}: {getattr(err, 'reason', err)}; "
                        f"place the file in {dest.parent} yourself") from None
    got = _md5(part)
    if got != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"checksum mismatch for {url}: md5 {got}, expected {md5}")
    os.replace(part, dest)
    return dest


def _ensure(name: str, root: Path, wanted: list[str], allow_download: bool) -> None:
    """Download the dataset's files into ``root`` when asked and some are missing."""
    if all(_find(root, w) for w in wanted) or not allow_download:
        return
    for url, md5 in DOWNLOADS[name]:
        dest = root / url.rsplit("/", 1)[1]
        if not dest.exists():
            download(url, md5, dest)
        if dest.name.endswith(".tar.gz"):
            import tarfile  # (here: only archives need it, and every start-up would pay for it)

            with tarfile.open(dest) as archive:
                archive.extractall(root, filter="data")


def _find(root: Path, stem: str) -> Optional[Path]:
    for folder in (root, root / "raw"):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _missing(name: str, roots: list[Path], files: list[str]) -> DataError:
    where = " or ".join(str(r) for r in roots)
    return DataError(f"{name} files not found in {where}: expected {', '.join(files)}; "
                     f"set data.root=<dir> or data.download=true")


# -- formats -------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (plain or gzip) of unsigned bytes as an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"corrupt IDX file {path}: {err}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"corrupt IDX file {path}: bad magic number (expected unsigned-byte IDX data)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"corrupt IDX file {path}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"corrupt IDX file {path}: {len(raw) - header} data bytes for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_idx(name: str, roots: list[Path]) -> tuple[Split, Split]:
    for root in roots:
        paths = [_find(root, f) for f in IDX_FILES]
        if all(paths):
            break
    else:
        raise _missing(name, roots, [f"{f}[.gz]" for f in IDX_FILES])
    arrays = [read_idx(p) for p in paths]
    splits = []
    for images, labels, path in ((arrays[0], arrays[1], paths[0]), (arrays[2], arrays[3], paths[2])):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"corrupt IDX pair at {path}: {images.shape} images for {labels.shape} labels")
        splits.append(_split(images[:, None], labels))
    return splits[0], splits[1]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only (plus the codec call that Python 3 pickles
    of bytes use): no other class or function can be reached."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return getattr(importlib.import_module(module), name)


def _cifar_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as err:  # any failure here means the file is not a CIFAR batch
        raise DataError(f"corrupt CIFAR-10 batch {path}: {err}") from None
    if len(data) != len(labels):
        raise DataError(f"corrupt CIFAR-10 batch {path}: {len(data)} images, {len(labels)} labels")
    return data, labels


def _cifar_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise DataError(f"corrupt CIFAR-10 binary batch {path}: {raw.size} bytes is not a multiple of 3073")
    rows = raw.reshape(-1, 3073)
    return rows[:, 1:].reshape(-1, 3, 32, 32), rows[:, 0].astype(np.int64)


def load_cifar10(roots: list[Path]) -> tuple[Split, Split]:
    layouts = (("cifar-10-batches-py", "data_batch_{}", "test_batch", _cifar_python_batch),
               ("cifar-10-batches-bin", "data_batch_{}.bin", "test_batch.bin", _cifar_binary_batch))
    for root in roots:
        for folder, train_name, test_name, reader in layouts:
            for base in (root / folder, root):
                files = [base / train_name.format(i) for i in range(1, 6)] + [base / test_name]
                if all(f.is_file() for f in files):
                    parts = [reader(f) for f in files]
                    train = [np.concatenate([p[i] for p in parts[:5]]) for i in (0, 1)]
                    return _split(*train), _split(*parts[5])
    raise _missing("cifar10", roots, ["cifar-10-batches-py/data_batch_1..5 + test_batch (or -bin)"])


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(np.require(images, requirements="CW"), labels.astype(np.int64))  # C order, writable


def load_svhn(roots: list[Path]) -> tuple[Split, Split]:
    from scipy.io import loadmat

    for root in roots:
        files = [root / "train_32x32.mat", root / "test_32x32.mat"]
        if all(f.is_file() for f in files):
            splits = []
            for f in files:
                try:
                    mat = loadmat(f)
                    images = np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8)
                    labels = mat["y"].reshape(-1).astype(np.int64) % 10  # SVHN labels digit 0 as 10
                except Exception as err:  # scipy raises many types for a bad .mat
                    raise DataError(f"corrupt SVHN file {f}: {err}") from None
                if len(images) != len(labels):
                    raise DataError(f"corrupt SVHN file {f}: {len(images)} images, {len(labels)} labels")
                splits.append(_split(images, labels))
            return splits[0], splits[1]
    raise _missing("svhn", roots, ["train_32x32.mat", "test_32x32.mat"])


def load_digits_splits() -> tuple[Split, Split]:
    """scikit-learn's digits with a fixed 20% test split: the rows ``randperm(1797, 0)[:359]``.

    Read straight from the CSV that scikit-learn ships (importing sklearn costs seconds).
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        table = small_ints_csv(gzip.decompress(path.read_bytes()), 65)
    except (OSError, ValueError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read scikit-learn's digits at {path}: {err}") from None
    everything = _split(table[:, :64].astype(np.uint8).reshape(-1, 1, 8, 8), table[:, 64])
    order = randperm(len(everything), 0)
    n_test = len(everything) // 5
    return everything.subset(order[n_test:]), everything.subset(order[:n_test])


def small_ints_csv(raw: bytes, columns: int) -> np.ndarray:
    """A CSV of non-negative integers (digits, commas, newlines only) as a float32 table, parsed
    in a few numpy passes: np.loadtxt takes 6x as long, which `gxnor eval` of a packed model
    (start-up timed against onnxruntime alone) would notice.  ValueError for anything else."""
    b = np.frombuffer(raw, dtype=np.uint8)
    sep = (b == ord(",")) | (b == ord("\n"))
    if not np.all(sep | ((b >= ord("0")) & (b <= ord("9")))):
        raise ValueError("not a CSV of non-negative integers")
    edges = np.diff(np.concatenate(([0], ~sep, [0])).astype(np.int8))  # +1: a number starts, -1: it ended
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths, values = ends - starts, np.zeros(len(starts), dtype=np.int64)
    if len(starts) == 0 or len(starts) % columns or lengths.max() > 9:
        raise ValueError(f"expected rows of {columns} integers")
    for k in range(int(lengths.max())):
        more = lengths > k
        values[more] = 10 * values[more] + b[starts[more] + k] - ord("0")
    return values.reshape(-1, columns).astype(np.float32)


# -- the registry ---------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """How to read one dataset: ``read(roots, download) -> (train, test)``; ``max_value``, the
    raw value that maps to +1; ``fallback``, a directory searched when ``data.root`` is unset."""

    read: Callable[[list[Path], bool], tuple[Split, Split]]
    max_value: float = 255.0
    fallback: Optional[Path] = None
    embedded: bool = False  # shipped inside a package: no files to look for (data.root means nothing)


#: Datasets by name (``data.name``), in the order users see them.
DATASETS = Registry("dataset")


def source(name: str, max_value: float = 255.0, fallback: Optional[Path] = None, embedded: bool = False):
    """Decorator: register ``read(roots, download)`` as the dataset ``name``."""
    def add(read):
        DATASETS.register(name)(Source(read, max_value, fallback, embedded))
        return read
    return add


@source("digits", max_value=16.0, embedded=True)
def digits(roots: list[Path], download: bool) -> tuple[Split, Split]:
    return load_digits_splits()


@source("mnist")
def mnist(roots: list[Path], download: bool) -> tuple[Split, Split]:
    _ensure("mnist", roots[0], list(IDX_FILES), download)
    return load_idx("mnist", roots)


@source("fashion_mnist", fallback=DEBIAN_FASHION_MNIST)
def fashion_mnist(roots: list[Path], download: bool) -> tuple[Split, Split]:
    _ensure("fashion_mnist", roots[0], list(IDX_FILES), download)
    return load_idx("fashion_mnist", roots)


@source("cifar10")
def cifar10(roots: list[Path], download: bool) -> tuple[Split, Split]:
    if download and not (roots[0] / "cifar-10-batches-py").is_dir():
        _ensure("cifar10", roots[0], ["cifar-10-python.tar.gz"], True)
    return load_cifar10(roots)


@source("svhn")
def svhn(roots: list[Path], download: bool) -> tuple[Split, Split]:
    _ensure("svhn", roots[0], ["train_32x32.mat", "test_32x32.mat"], download)
    return load_svhn(roots)


def data_roots(name: str, root: Optional[str]) -> list[Path]:
    """Where the files of ``name`` are looked for: ``root`` (data.root), else data/<name> and
    the dataset's fallback directory."""
    if root:
        return [Path(root).expanduser()]
    fallback = DATASETS[name].fallback
    return [Path("data") / name] + ([fallback] if fallback else [])


def read_arrays(name: str, root: Optional[str] = None, download: bool = False, limit: Optional[int] = None,
                val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """The dataset ``name`` as numpy arrays (its files from ``root``, downloaded when
    ``download``), with a validation split of ``val_fraction`` carved from its training part
    by ``randperm(len(train), seed)``; ``limit`` keeps the first N of the rest."""
    try:
        found = DATASETS[name]
    except ValueError as err:
        raise DataError(str(err)) from None
    train, test = found.read(data_roots(name, root), download)
    order = randperm(len(train), seed)
    n_val = max(1, int(round(len(train) * val_fraction)))
    val, rest = train.subset(order[:n_val]), train.subset(order[n_val:])
    if limit is not None:
        rest = rest.subset(np.arange(min(limit, len(rest))))
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    return Dataset(name, rest, val, test, found.max_value, num_classes)


def load_data(section, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """:func:`read_arrays` for a ``data`` config section, as torch tensors (for training)."""
    arrays = read_arrays(section.name, section.root, section.download, section.limit, val_fraction, seed)
    return Dataset(arrays.name, arrays.train.tensors(), arrays.val.tensors(), arrays.test.tensors(),
                   arrays.max_value, arrays.num_classes)
