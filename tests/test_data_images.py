"""Image data: IDX reader / Fashion-MNIST loader, sklearn digits, CIFAR pickles and the restricted unpickler."""

from __future__ import annotations

import gzip
import os
import pathlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from energyarch.data import (
    FASHION_MNIST_ROOT,
    ImageData,
    load_cifar,
    load_digits_dataset,
    load_fashion_mnist,
    make_loaders,
    read_idx,
    restricted_pickle_load,
)
from energyarch.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------- IDX


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialise a uint8 array in the IDX format (magic 0x000008NN, big-endian dims)."""
    assert arr.dtype == np.uint8
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture()
def tiny_mnist(tmp_path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 9, 3, 3, 1], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(2, 4, 3), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 2], dtype=np.uint8),
    }
    # Mix gzip and raw files: both must be accepted.
    for k, (name, arr) in enumerate(arrays.items()):
        write_idx(tmp_path / (name + ".gz" if k % 2 == 0 else name), arr, compress=k % 2 == 0)
    return arrays


def test_read_idx_gzip_and_raw(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", arr, compress=False)
    write_idx(tmp_path / "b-idx3-ubyte.gz", arr, compress=True)
    for name in ("a-idx3-ubyte", "b-idx3-ubyte.gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, arr)
    # Other IDX types: big-endian int32.
    ints = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "c-idx1-int").write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + ints.tobytes())
    assert read_idx(tmp_path / "c-idx1-int").tolist() == [1, -2, 70000]


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path: Path) -> None:
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(DataError, match=r"bad-idx3-ubyte: bad magic number 0x3C68746D.*0x00000803"):
        read_idx(bad)
    also_bad = tmp_path / "bad2-idx1-ubyte.gz"
    also_bad.write_bytes(gzip.compress(bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 5])))  # unknown type code 0x42
    with pytest.raises(DataError, match="bad magic number 0x00004201"):
        read_idx(also_bad)
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8))[:-3])
    with pytest.raises(DataError, match=r"need 10 data bytes but the file has 7"):
        read_idx(short)
    broken_gz = tmp_path / "broken-idx1-ubyte.gz"
    broken_gz.write_bytes(gzip.compress(idx_bytes(np.arange(10, dtype=np.uint8)))[:-6])
    with pytest.raises(DataError, match="broken-idx1-ubyte.gz: cannot read it"):
        read_idx(broken_gz)


def test_load_fashion_mnist_from_tiny_files(tmp_path: Path, tiny_mnist: dict[str, np.ndarray]) -> None:
    data = load_fashion_mnist(tmp_path)
    assert isinstance(data, ImageData) and data.name == "fashion-mnist" and data.num_classes == 10
    assert data.train_x.shape == (5, 1, 4, 3) and data.test_x.shape == (2, 1, 4, 3)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.long
    np.testing.assert_allclose(data.train_x[:, 0].numpy(), tiny_mnist["train-images-idx3-ubyte"] / 255.0, rtol=1e-6)
    assert data.train_y.tolist() == [0, 9, 3, 3, 1] and data.test_y.tolist() == [7, 2]
    assert data.mean == pytest.approx((tiny_mnist["train-images-idx3-ubyte"].mean() / 255.0,))
    assert data.std[0] == pytest.approx(float(torch.tensor(tiny_mnist["train-images-idx3-ubyte"] / 255.0).std()))
    assert data.classes[0] == "T-shirt/top" and data.image_shape == (1, 4, 3)


def test_load_fashion_mnist_inconsistent_files(tmp_path: Path, tiny_mnist: dict[str, np.ndarray]) -> None:
    labels = tmp_path / "train-labels-idx1-ubyte"  # the fixture wrote this one raw
    write_idx(labels, np.zeros(4, dtype=np.uint8), compress=False)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte holds shape \(4,\) but .* has 5 images"):
        load_fashion_mnist(tmp_path)
    # Image and label files swapped.
    write_idx(labels, tiny_mnist["train-images-idx3-ubyte"], compress=False)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", tiny_mnist["train-labels-idx1-ubyte"], compress=True)
    with pytest.raises(DataError, match="expected uint8 \\(N, H, W\\) images; check that the image and label"):
        load_fashion_mnist(tmp_path)


def test_load_fashion_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_fashion_mnist(tmp_path / "nowhere")
    msg = str(info.value)
    assert "nowhere does not exist" in msg
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert name in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((1, 2, 2), np.uint8), compress=True)
    with pytest.raises(DataError, match=r"lacks train-labels-idx1-ubyte\[.gz\], t10k-images"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not (FASHION_MNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(), reason="Debian dataset absent")
def test_real_fashion_mnist_if_installed() -> None:
    data = load_fashion_mnist()
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert float(data.train_x.min()) == 0.0 and float(data.train_x.max()) == 1.0
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
    assert data.mean[0] == pytest.approx(0.2860, abs=1e-3) and data.std[0] == pytest.approx(0.3530, abs=1e-3)


# ---------------------------------------------------------------------------------------------- digits


def test_load_digits_dataset() -> None:
    data = load_digits_dataset()
    assert data.train_x.shape == (1437, 1, 8, 8) and data.test_x.shape == (360, 1, 8, 8)
    assert float(data.train_x.min()) == 0.0 and float(data.train_x.max()) == 1.0
    assert data.num_classes == 10 and data.name == "digits"
    assert sorted(set(data.test_y.tolist())) == list(range(10))  # stratified: every class in test
    again = load_digits_dataset()
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)
    other = load_digits_dataset(seed=1)
    assert not torch.equal(other.test_y, data.test_y)
    with pytest.raises(ConfigError, match="test_size"):
        load_digits_dataset(test_size=0)


def test_make_loaders() -> None:
    data = load_digits_dataset()
    train, test = make_loaders(data, batch_size=100, normalize=True, seed=3)
    x, y = next(iter(train))
    assert x.shape == (100, 1, 8, 8) and y.dtype == torch.long
    all_x = torch.cat([b for b, _ in train])
    assert float(all_x.mean()) == pytest.approx(0.0, abs=1e-4) and float(all_x.std()) == pytest.approx(1.0, abs=1e-3)
    assert sum(len(b) for b, _ in test) == 360
    first = next(iter(make_loaders(data, batch_size=100, normalize=True, seed=3)[0]))[1]
    assert torch.equal(first, y)  # seeded shuffle
    with pytest.raises(ConfigError, match="batch_size"):
        make_loaders(data, batch_size=0)


# ---------------------------------------------------------------------------------------------- CIFAR


def cifar_rows(n: int, offset: int) -> np.ndarray:
    """Rows whose byte at flat position c*1024 + h*32 + w encodes (offset + that position) mod 251."""
    return ((np.arange(3072)[None, :] + offset + 7 * np.arange(n)[:, None]) % 251).astype(np.uint8)


def py2_pickle(obj: object) -> bytes:
    """Serialise like Python 2's cPickle (protocol 2) with numpy 1.x, i.e. like the official CIFAR files.

    Strings are 8-bit STRING opcodes, arrays go through ``numpy.core.multiarray._reconstruct`` and the dtype is
    rebuilt as ``numpy.dtype('u1', 0, 1)`` (ints, not bools).
    """

    def string(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    def enc(o: object) -> bytes:
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"
        if isinstance(o, tuple):
            return b"(" + b"".join(enc(v) for v in o) + b"t"
        if o is None:
            return b"N"
        if isinstance(o, int):
            return b"J" + struct.pack("<i", o)
        if isinstance(o, (bytes, str)):
            return string(o.encode("latin1") if isinstance(o, str) else o)
        if isinstance(o, np.ndarray) and o.dtype == np.uint8:
            dtype = b"cnumpy\ndtype\n" + string(b"u1") + b"J\x00\x00\x00\x00J\x01\x00\x00\x00\x87R"
            dtype += enc((3, "|", None, None, None, -1, -1, 0)) + b"b"
            head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + enc((0,)) + string(b"b") + b"\x87R"
            return head + b"(" + enc(1) + enc(o.shape) + dtype + b"\x89" + string(o.tobytes()) + b"tb"
        raise TypeError(type(o))

    return b"\x80\x02" + enc(obj) + b"."


def dump(path: Path, obj: object, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar10(folder: Path) -> None:
    folder.mkdir(parents=True)
    for k in range(1, 6):
        # Keys as bytes, like the official files written by Python 2 (and protocol 2, like them).
        dump(
            folder / f"data_batch_{k}",
            {b"data": cifar_rows(2, k), b"labels": [k, (k + 1) % 10], b"batch_label": b"training batch"},
        )
    dump(folder / "test_batch", {"data": cifar_rows(3, 100), "labels": [9, 8, 7]}, protocol=4)
    dump(
        folder / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": 2}
    )


def test_load_cifar10_from_root_or_folder(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py", str(tmp_path)):
        data = load_cifar(root, which=10)
        assert data.name == "cifar10" and data.num_classes == 10
        assert data.train_x.shape == (10, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
        assert data.train_y.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6] and data.test_y.tolist() == [9, 8, 7]
        assert data.classes == tuple(f"class{i}" for i in range(10))
        assert len(data.mean) == len(data.std) == 3
    # Channel-major layout: flat index c*1024 + h*32 + w becomes x[c, h, w].
    x = (data.train_x[0] * 255).round().to(torch.int64)
    for c, h, w in [(0, 0, 0), (1, 2, 3), (2, 31, 31), (0, 5, 30)]:
        assert int(x[c, h, w]) == (c * 1024 + h * 32 + w + 1) % 251


def test_load_cifar10_python2_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for k in range(1, 6):
        batch = {
            "batch_label": f"training batch {k} of 5",
            "labels": [k, 0],
            "data": cifar_rows(2, k),
            "filenames": ["a.png", "b.png"],
        }
        (folder / f"data_batch_{k}").write_bytes(py2_pickle(batch))
    (folder / "test_batch").write_bytes(py2_pickle({"labels": [3], "data": cifar_rows(1, 9)}))
    (folder / "batches.meta").write_bytes(py2_pickle({"label_names": ["airplane"] * 10, "num_vis": 3072}))
    # numpy-1.x pickles rebuild dtypes as numpy.dtype('u1', 0, 1): must load without warnings (errors here).
    data = load_cifar(folder)
    assert data.train_x.shape == (10, 3, 32, 32) and data.train_y.tolist()[:4] == [1, 0, 2, 0]
    assert int((data.test_x[0, 2, 31, 31] * 255).round()) == (3071 + 9) % 251
    assert data.classes[0] == "airplane"


def test_load_cifar100(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    dump(folder / "train", {b"data": cifar_rows(4, 0), b"fine_labels": [0, 99, 50, 1], b"coarse_labels": [0, 1, 2, 3]})
    dump(folder / "test", {b"data": cifar_rows(1, 0), b"fine_labels": [42]})
    dump(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []})
    data = load_cifar(tmp_path, which=100)
    assert data.num_classes == 100 and data.train_y.tolist() == [0, 99, 50, 1] and data.test_y.tolist() == [42]
    assert data.classes[99] == "c99"
    with pytest.raises(DataError, match=r"cifar-10-batches-py/ with data_batch_1"):
        load_cifar(tmp_path, which=10)


def test_load_cifar_missing_files_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar(tmp_path, which=10)
    msg = str(info.value)
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta", "cifar-10-batches-py"):
        assert name in msg
    assert "Nothing is downloaded" in msg
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    dump(folder / "train", {})
    with pytest.raises(DataError, match=r"lacks test, meta"):
        load_cifar(folder, which=100)
    with pytest.raises(ConfigError, match="which must be 10 or 100"):
        load_cifar(tmp_path, which=20)


def test_load_cifar_wrong_content(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    dump(folder / "data_batch_3", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"data_batch_3: data has dtype uint8 and shape \(2, 100\)"):
        load_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3: not a valid pickle"):
        load_cifar(tmp_path)


# ---------------------------------------------------------------------------------------------- restricted unpickler


class _TouchViaPathlib:
    """Unpickling this calls pathlib.Path.touch(marker): a real, harmless side effect to prove the payload works."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class _ShellPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def test_restricted_unpickler_refuses_code_and_runs_nothing(tmp_path: Path) -> None:
    # Control: the pathlib payload is live, a plain pickle.loads does create the file.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_TouchViaPathlib(control)))
    assert control.exists()

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    for k, payload_cls in enumerate((_TouchViaPathlib, _ShellPayload, _EvalPayload)):
        marker = tmp_path / f"pwned{k}"
        payload = {b"data": cifar_rows(2, 0), b"labels": [0, 1], b"extra": payload_cls(marker)}
        for protocol in (2, 4):
            dump(folder / "data_batch_2", payload, protocol=protocol)
            with pytest.raises(DataError, match=r"data_batch_2: the pickle refers to .*refusing to load it"):
                load_cifar(tmp_path)
            # Protocol 2 reaches Path.touch through getattr, which is refused as well.
            refused = r"refers to (pathlib\.Path\.touch|(posix|os)\.system|(__builtin__|builtins)\.(eval|getattr)),"
            with pytest.raises(DataError, match=refused):
                restricted_pickle_load(folder / "data_batch_2")
            assert not marker.exists()


def test_restricted_unpickler_allows_plain_numpy_and_containers(tmp_path: Path) -> None:
    obj = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": [1, 2.5, "x", b"y", (3,)],
        "c": {4, 5},
        "d": np.float64(1.5),
    }
    for protocol in (2, 4, 5):
        dump(tmp_path / "ok.pkl", obj, protocol=protocol)
        out = restricted_pickle_load(tmp_path / "ok.pkl")
        np.testing.assert_array_equal(out["a"], obj["a"])
        assert out["b"] == obj["b"] and out["c"] == {4, 5} and float(out["d"]) == 1.5
