"""Image classification data: Fashion-MNIST (IDX files), scikit-learn's 8×8 digits, CIFAR-10/100 (python pickles).

Every loader returns an :class:`ImageData` with float32 images in ``[0, 1]`` of shape ``(N, C, H, W)`` and int64
labels. Nothing is ever downloaded: the loaders read files that are already on disk and say where to get them.

>>> data = load_digits_dataset()
>>> data.train_x.shape, data.test_x.shape, data.num_classes
(torch.Size([1437, 1, 8, 8]), torch.Size([360, 1, 8, 8]), 10)

CIFAR files are Python pickles; they are read with :class:`RestrictedUnpickler`, which only resolves the numpy
array-reconstruction helpers and plain containers, so a crafted file cannot run code.
"""

from __future__ import annotations

import builtins
import gzip
import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import ConfigError, DataError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_ROOT",
    "ImageData",
    "RestrictedUnpickler",
    "load_cifar",
    "load_digits_dataset",
    "load_fashion_mnist",
    "make_loaders",
    "read_idx",
    "restricted_pickle_load",
]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass
class ImageData:
    """A train/test split of images in ``[0, 1]``.

    ``train_x``/``test_x``: float32 ``(N, C, H, W)``; ``train_y``/``test_y``: int64 ``(N,)``; ``mean``/``std``:
    per-channel statistics of the training images (for normalisation); ``classes``: class names when known.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = field(default=())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        return (
            f"ImageData(name={self.name!r}, train={tuple(self.train_x.shape)}, test={tuple(self.test_x.shape)}, "
            f"num_classes={self.num_classes})"
        )


def _make(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    scale: float,
    num_classes: int,
    classes: tuple[str, ...] = (),
) -> ImageData:
    """Build :class:`ImageData` from uint8/int arrays ``(N, C, H, W)`` divided by ``scale``."""
    tx = torch.from_numpy(np.ascontiguousarray(train_x)).to(torch.float32).div_(scale)
    vx = torch.from_numpy(np.ascontiguousarray(test_x)).to(torch.float32).div_(scale)
    stats = tx.transpose(0, 1).reshape(tx.shape[1], -1).to(torch.float64)
    mean = tuple(float(v) for v in stats.mean(dim=1))
    std = tuple(float(v) for v in stats.std(dim=1))
    return ImageData(
        train_x=tx,
        train_y=torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
        test_x=vx,
        test_y=torch.from_numpy(np.asarray(test_y, dtype=np.int64)),
        num_classes=num_classes,
        name=name,
        mean=mean,
        std=std,
        classes=classes,
    )


# --------------------------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------------------------

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzip-compressed or raw (detected from the content).

    Header: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, then each dimension as a
    big-endian uint32. The payload must hold exactly the product of the dimensions.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
    >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(p).tolist()
    [7, 8, 9]
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head == b"\x1f\x8b":
                with gzip.open(fh, "rb") as gz:
                    raw = gz.read()
            else:
                raw = fh.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"IDX file {p}: cannot read it ({exc}); re-install or re-download the file.") from exc
    if len(raw) < 4:
        raise DataError(f"IDX file {p}: only {len(raw)} bytes, too short for an IDX header; the file is truncated.")
    magic = int.from_bytes(raw[:4], "big")
    code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"IDX file {p}: bad magic number 0x{magic:08X}; an IDX file starts with 0x0000TTDD (TT = type code "
            f"08 for uint8 images/labels, DD = number of dimensions, e.g. 0x00000803 for images, 0x00000801 for "
            f"labels). Check that this is an (optionally gzipped) IDX file and not, e.g., an HTML error page."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {p}: header declares {ndim} dimensions but the file ends early; it is truncated.")
    dims = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"IDX file {p}: dimensions {dims} need {expected} data bytes but the file has {len(raw) - header}; "
            f"the file is truncated or corrupt, re-install it."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, base: str) -> Path | None:
    for name in (base + ".gz", base, base.replace("-idx", ".idx") + ".gz", base.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    return None


def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> ImageData:
    """Load Fashion-MNIST from IDX files: 60,000 train and 10,000 test 28×28 grey images, 10 classes.

    ``root`` defaults to ``/usr/share/datasets/fashion-mnist`` (Debian: ``apt install dataset-fashion-mnist``)
    and must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``, each raw or with ``.gz``. Works for the original MNIST files too.

    >>> data = load_fashion_mnist()  # doctest: +SKIP
    >>> data.train_x.shape, data.classes[0]  # doctest: +SKIP
    (torch.Size([60000, 1, 28, 28]), 'T-shirt/top')
    """
    r = Path(root).expanduser() if root is not None else FASHION_MNIST_ROOT
    found = {key: _find_idx(r, base) for key, base in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] for k, v in found.items() if v is None]
    if missing:
        where = "does not exist" if not r.is_dir() else f"lacks {', '.join(m + '[.gz]' for m in missing)}"
        raise DataError(
            f"Fashion-MNIST: directory {r} {where}. Expected the IDX files "
            f"{', '.join(b + '[.gz]' for b in FASHION_MNIST_FILES.values())}. On Debian/Ubuntu run "
            f"'sudo apt-get install dataset-fashion-mnist' (installs them in {FASHION_MNIST_ROOT}), or pass "
            f"root= a directory holding those files."
        )
    arrays = {key: read_idx(path) for key, path in found.items() if path is not None}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        xfile, yfile = found[f"{split}_images"], found[f"{split}_labels"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(
                f"Fashion-MNIST: {xfile} holds a {x.dtype} array of shape {x.shape}, expected uint8 (N, H, W) "
                f"images; check that the image and label files are not swapped."
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"Fashion-MNIST: {yfile} holds shape {y.shape} but {xfile} has {x.shape[0]} images; expected one "
                f"label per image, check that the files belong together."
            )
        if y.size and int(y.max()) > 9:
            raise DataError(f"Fashion-MNIST: {yfile} has label {int(y.max())}, expected 0..9; the file is corrupt.")
    return _make(
        "fashion-mnist",
        arrays["train_images"][:, None],
        arrays["train_labels"],
        arrays["test_images"][:, None],
        arrays["test_labels"],
        255.0,
        10,
        FASHION_MNIST_CLASSES,
    )


# --------------------------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------------------------


def load_digits_dataset(test_size: int = 360, seed: int = 0) -> ImageData:
    """scikit-learn's embedded 8×8 handwritten digits (1,797 images, values 0..16 scaled to ``[0, 1]``).

    Stratified split with a fixed seed: by default 1,437 train and 360 test images. No files needed.

    >>> d = load_digits_dataset()
    >>> float(d.train_x.max()) <= 1.0, d.train_y.dtype
    (True, torch.int64)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if isinstance(test_size, bool) or not isinstance(test_size, int) or not 10 <= test_size <= 1787:
        raise ConfigError(
            f"load_digits_dataset: test_size must be an int between 10 and 1787 (of 1797 images), got "
            f"{test_size!r}; the default is 360."
        )
    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    y = digits.target.astype(np.int64)
    tx, vx, ty, vy = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return _make("digits", tx, ty, vx, vy, 16.0, 10, tuple(str(k) for k in range(10)))


# --------------------------------------------------------------------------------------------------------------
# CIFAR (python pickle layout) with a restricted unpickler
# --------------------------------------------------------------------------------------------------------------

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
    from numpy._core.numeric import _frombuffer as _np_frombuffer  # type: ignore[attr-defined]  # private: no stub
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer as _np_frombuffer  # type: ignore[no-redef]

import _codecs  # noqa: E402  - protocol-2 pickles written by Python 3 encode bytes as _codecs.encode(str, 'latin1')


def _np_dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` for unpickling. Pickles from numpy 1.x (the official CIFAR files) pass ``align``/``copy``
    as ints, ``('u1', 0, 1)``; numpy >= 2.4 accepts exactly that form but warns on mixes such as ``('u1', 0, True)``,
    so the flags are normalised to bools here."""
    return np.dtype(obj, align=bool(align), copy=bool(copy))


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,  # protocol 5; refuses object dtypes
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _np_dtype,
    ("_codecs", "encode"): _codecs.encode,
}
for _name in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float", "bool"):
    _ALLOWED[("builtins", _name)] = getattr(builtins, _name)
    _ALLOWED[("__builtin__", _name)] = getattr(builtins, _name)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves numpy array reconstruction and plain containers.

    Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raises :class:`DataError`
    before it is looked up, so nothing is imported and no code from the file runs.
    """

    source = "<pickle>"

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: the pickle refers to {module}.{name}, which a CIFAR batch file never contains; "
                f"refusing to load it (it could run code). Use the official cifar-10/100 python files."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: the pickle uses persistent ids, which CIFAR files never do; refusing it.")


def restricted_pickle_load(path: str | os.PathLike[str]) -> Any:
    """Load a pickle through :class:`RestrictedUnpickler` (bytes strings from Python 2 stay ``bytes``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p}: cannot read it ({exc}); check the path and permissions.") from exc
    unpickler = RestrictedUnpickler(io.BytesIO(data), encoding="bytes")
    unpickler.source = str(p)
    try:
        return unpickler.load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(
            f"{p}: not a valid pickle ({type(exc).__name__}: {exc}); re-extract the CIFAR archive."
        ) from exc


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}; this is not a CIFAR batch file.")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


_CIFAR_LAYOUT = {
    10: (
        "cifar-10-batches-py",
        [f"data_batch_{k}" for k in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
    ),
    100: ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _str_keys(restricted_pickle_load(path), path)
    if "data" not in d or label_key not in d:
        raise DataError(
            f"{path}: CIFAR batch lacks '{'data' if 'data' not in d else label_key}' (keys: {sorted(d)}); "
            f"is this the right CIFAR variant (which=10 or 100)?"
        )
    x = np.asarray(d["data"])
    y = np.asarray(d[label_key], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (x.shape[0],):
        raise DataError(
            f"{path}: data has dtype {x.dtype} and shape {x.shape} with {y.shape} labels; expected uint8 (N, 3072) "
            f"and N labels. Re-extract the CIFAR archive."
        )
    return x.reshape(-1, 3, 32, 32), y


def load_cifar(root: str | os.PathLike[str], which: int = 10) -> ImageData:
    """Load CIFAR-10 or CIFAR-100 (fine labels) from the official python-pickle layout. Never downloads.

    ``root`` is either the folder holding ``cifar-10-batches-py/`` (resp. ``cifar-100-python/``) or that folder
    itself. CIFAR-10 needs ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``; CIFAR-100
    needs ``train``, ``test`` and ``meta``. Get them from https://www.cs.toronto.edu/~kriz/cifar.html
    (``cifar-10-python.tar.gz``) and extract with ``tar xzf``.

    >>> data = load_cifar("~/data", which=10)  # doctest: +SKIP
    >>> data.train_x.shape  # doctest: +SKIP
    torch.Size([50000, 3, 32, 32])
    """
    if which not in _CIFAR_LAYOUT or isinstance(which, bool):
        raise ConfigError(f"load_cifar: which must be 10 or 100, got {which!r}.")
    folder, train_files, test_files, meta_file, label_key, names_key = _CIFAR_LAYOUT[which]
    base = Path(root).expanduser()
    d = base if base.name == folder or not (base / folder).is_dir() else base / folder
    needed = [*train_files, *test_files, meta_file]
    missing = [f for f in needed if not (d / f).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-{which}: {d} lacks {', '.join(missing)}. Expected {folder}/ with {', '.join(needed)} "
            f"(pass root= the folder that contains {folder}/, or {folder}/ itself). Nothing is downloaded: get "
            f"cifar-{which}-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it there."
        )
    train = [_read_cifar_batch(d / f, label_key) for f in train_files]
    test = [_read_cifar_batch(d / f, label_key) for f in test_files]
    meta = _str_keys(restricted_pickle_load(d / meta_file), d / meta_file)
    names = meta.get(names_key, [])
    classes = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    if len(classes) != which:
        raise DataError(
            f"{d / meta_file}: '{names_key}' lists {len(classes)} class names, expected {which}; is this the "
            f"CIFAR-{which} meta file?"
        )
    train_y = np.concatenate([y for _, y in train])
    test_y = np.concatenate([y for _, y in test])
    for split, y in (("train", train_y), ("test", test_y)):
        if y.size and (int(y.min()) < 0 or int(y.max()) >= which):
            raise DataError(
                f"CIFAR-{which} {split} labels span {int(y.min())}..{int(y.max())}, expected 0..{which - 1}; "
                f"is this the CIFAR-{which} archive?"
            )
    return _make(
        f"cifar{which}",
        np.concatenate([x for x, _ in train]),
        train_y,
        np.concatenate([x for x, _ in test]),
        test_y,
        255.0,
        which,
        classes,
    )


# --------------------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------------------


def make_loaders(
    data: ImageData,
    batch_size: int,
    *,
    test_batch_size: int | None = None,
    normalize: bool = False,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Train and test :class:`~torch.utils.data.DataLoader` over in-memory tensors.

    ``normalize=True`` standardises with the training mean/std per channel. The training order is seeded.

    >>> train, test = make_loaders(load_digits_dataset(), batch_size=64)
    >>> x, y = next(iter(train))
    >>> tuple(x.shape), y.dtype
    ((64, 1, 8, 8), torch.int64)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"make_loaders: batch_size must be a positive int, got {batch_size!r}; e.g. 128.")
    tx, vx = data.train_x, data.test_x
    if normalize:
        mean = torch.tensor(data.mean, dtype=tx.dtype).view(1, -1, 1, 1)
        std = torch.tensor(data.std, dtype=tx.dtype).view(1, -1, 1, 1).clamp_min(1e-8)
        tx, vx = (tx - mean) / std, (vx - mean) / std
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(
        TensorDataset(tx, data.train_y),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=num_workers,
        drop_last=drop_last,
    )
    test = DataLoader(
        TensorDataset(vx, data.test_y), batch_size=test_batch_size or batch_size, shuffle=False, num_workers=num_workers
    )
    return train, test
