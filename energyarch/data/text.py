"""Byte-level text: an embedded corpus every machine has, local UTF-8 files, a fixed split and windows.

The vocabulary is the 256 byte values (no tokenizer). The default corpus is a fixed, sorted list of the Python
standard library's own source files (:data:`STDLIB_FILES`, read from ``sysconfig.get_paths()["stdlib"]``,
concatenated in that order, missing ones skipped): nothing is downloaded. Its bytes differ between Python
versions, so a corpus records the Python version, the files it read and the sha256 of its bytes
(:meth:`TextCorpus.info`); a run stores them and evaluation warns when they differ.

>>> corpus = stdlib_corpus()
>>> corpus.source, len(corpus.sha256), corpus.python == platform.python_version()
('python-stdlib', 64, True)
>>> train, val = split_bytes(corpus.data)
>>> len(train) + len(val) == len(corpus.data), len(val) == math.ceil(0.1 * len(corpus.data))
(True, True)

Training reads seeded random windows of ``seq_len + 1`` bytes (input = the first ``seq_len``, target = the last
``seq_len``); evaluation reads fixed, non-overlapping windows:

>>> x, y = ByteWindows.random(train, seq_len=8, count=4, seed=0)[[0, 1]]
>>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())
(torch.Size([2, 8]), True)
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError

__all__ = [
    "ByteWindows",
    "STDLIB_FILES",
    "TEXT_SUFFIXES",
    "TextCorpus",
    "bits_per_byte",
    "load_text",
    "split_bytes",
    "stdlib_corpus",
    "text_corpus",
]

#: Standard-library modules of the embedded corpus, in this order (single-file modules present from Python 3.10
#: to 3.13; one missing in some version is skipped, and the recorded file list says which were read).
STDLIB_FILES = (
    "abc.py",
    "argparse.py",
    "ast.py",
    "base64.py",
    "bisect.py",
    "calendar.py",
    "cmd.py",
    "code.py",
    "codecs.py",
    "colorsys.py",
    "configparser.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "dataclasses.py",
    "datetime.py",
    "difflib.py",
    "dis.py",
    "doctest.py",
    "enum.py",
    "fnmatch.py",
    "fractions.py",
    "ftplib.py",
    "functools.py",
    "getopt.py",
    "gettext.py",
    "glob.py",
    "graphlib.py",
    "gzip.py",
    "hashlib.py",
    "heapq.py",
    "hmac.py",
    "inspect.py",
    "ipaddress.py",
    "keyword.py",
    "linecache.py",
    "locale.py",
    "mimetypes.py",
    "numbers.py",
    "operator.py",
    "optparse.py",
    "os.py",
    "pickle.py",
    "platform.py",
    "pprint.py",
    "queue.py",
    "random.py",
    "reprlib.py",
    "sched.py",
    "secrets.py",
    "selectors.py",
    "shlex.py",
    "shutil.py",
    "socket.py",
    "statistics.py",
    "string.py",
    "subprocess.py",
    "tarfile.py",
    "tempfile.py",
    "textwrap.py",
    "threading.py",
    "timeit.py",
    "tokenize.py",
    "traceback.py",
    "types.py",
    "typing.py",
    "uuid.py",
    "warnings.py",
    "weakref.py",
)

#: file suffixes read from a folder passed as ``text_path`` (sorted by their path relative to the folder)
TEXT_SUFFIXES = (".txt", ".md", ".py")

#: fraction of the bytes (the last ones) held out for validation
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class TextCorpus:
    """A byte corpus and where it came from."""

    data: bytes  # the concatenated bytes
    source: str  # 'python-stdlib' (the embedded corpus) or the resolved path of the file / folder read
    files: tuple  # the files read, in order (names relative to the stdlib or the folder)
    sha256: str  # hex digest of ``data``
    python: Optional[str] = None  # Python version whose standard library was read (embedded corpus only)

    def info(self) -> dict:
        """What a run records about its data: source, Python version, files, sha256 and size."""
        return {
            "source": self.source,
            "python": self.python,
            "files": list(self.files),
            "sha256": self.sha256,
            "bytes": len(self.data),
        }


def _corpus(data: bytes, source: str, files: Sequence[str], python: Optional[str] = None) -> TextCorpus:
    return TextCorpus(data, source, tuple(files), hashlib.sha256(data).hexdigest(), python)


def stdlib_corpus(stdlib: Optional[str | os.PathLike] = None) -> TextCorpus:
    """The embedded corpus: :data:`STDLIB_FILES` of ``stdlib`` (default: this Python's), concatenated in order.

    >>> stdlib_corpus().files[:2]
    ('abc.py', 'argparse.py')
    """
    root = Path(stdlib) if stdlib is not None else Path(sysconfig.get_paths()["stdlib"])
    files = [name for name in STDLIB_FILES if (root / name).is_file()]
    if not files:
        raise DataError(
            f"embedded text corpus: none of the {len(STDLIB_FILES)} standard-library files (abc.py, "
            f'argparse.py, ...) is in {str(root)!r}; pass your own text with text_path = "file.txt"'
        )
    data = b"".join((root / name).read_bytes() for name in files)
    return _corpus(data, "python-stdlib", files, platform.python_version())


def _check_utf8(raw: bytes, where: Path) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"text file {str(where)!r}: not UTF-8 text (byte {err.start}, line {line}: "
            f"{raw[err.start : err.start + 4]!r}); convert it, e.g. iconv -t UTF-8, or leave it out "
            f"of the folder"
        ) from None


def load_text(path: str | os.PathLike) -> TextCorpus:
    """A local UTF-8 text file, or a folder's ``*.txt``, ``*.md`` and ``*.py`` files (recursively, sorted by
    relative path, hidden files and folders skipped), concatenated.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "b.txt").write_text("world"); _ = (folder / "a.md").write_text("hello ")
    >>> load_text(folder).data, load_text(folder).files
    (b'hello world', ('a.md', 'b.txt'))
    """
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(
            (
                f
                for f in p.rglob("*")
                if f.suffix in TEXT_SUFFIXES
                and f.is_file()
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            ),
            key=lambda f: f.relative_to(p).as_posix(),
        )
        if not files:
            raise DataError(
                f"text folder {str(p)!r}: no {', '.join('*' + s for s in TEXT_SUFFIXES)} files in it; "
                f"put the text there or pass one file as text_path"
            )
        names = [f.relative_to(p).as_posix() for f in files]
    elif p.is_file():
        files, names = [p], [p.name]
    else:
        raise DataError(
            f"text_path {str(path)!r}: no such file or folder; give a UTF-8 text file or a folder of "
            f"{'/'.join(TEXT_SUFFIXES)} files, or leave text_path unset for the embedded corpus"
        )
    chunks = []
    for f in files:
        try:
            raw = f.read_bytes()
        except OSError as err:
            raise DataError(f"text file {str(f)!r}: cannot read it ({err}); check its permissions") from err
        _check_utf8(raw, f)
        chunks.append(raw)
    data = b"".join(chunks)
    if not data:
        raise DataError(
            f"text_path {str(path)!r}: the text is empty ({len(files)} file(s), 0 bytes); give a non-empty UTF-8 file"
        )
    return _corpus(data, str(p.resolve()), names)


def text_corpus(path: Optional[str | os.PathLike] = None) -> TextCorpus:
    """``load_text(path)``, or the embedded corpus when ``path`` is None."""
    return stdlib_corpus() if path is None else load_text(path)


def split_bytes(data: bytes, val_fraction: float = VAL_FRACTION) -> tuple[bytes, bytes]:
    """The fixed split: the last ``ceil(val_fraction * n)`` bytes for validation, the rest for training.

    >>> split_bytes(b"0123456789")
    (b'012345678', b'9')
    """
    if not 0 < val_fraction < 1:
        raise ConfigError(f"split_bytes: val_fraction={val_fraction!r} must be in (0, 1), e.g. 0.1")
    n_val = math.ceil(val_fraction * len(data))
    return data[: len(data) - n_val], data[len(data) - n_val :]


class ByteWindows(Dataset):
    """Windows of ``seq_len + 1`` bytes of ``data`` at ``starts``: item ``i`` is ``(x, y)``, long tensors of
    shape ``(seq_len,)`` with ``y`` the next byte of each position of ``x``. A list of indices gives a batch.

    Build with :meth:`random` (training) or :meth:`sequential` (evaluation).
    """

    def __init__(self, data: bytes | Tensor, seq_len: int, starts: Tensor):
        self.data = data if isinstance(data, Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.seq_len = seq_len
        self.starts = starts.long()
        self._span = torch.arange(seq_len + 1)

    @staticmethod
    def _check(data: bytes, seq_len: int, what: str) -> None:
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
            raise ConfigError(f"seq_len={seq_len!r}: must be an integer >= 1, e.g. seq_len = 128")
        if len(data) < seq_len + 1:
            raise DataError(
                f"the {what} text has {len(data)} bytes, fewer than seq_len + 1 = {seq_len + 1}; give "
                f"more text or a smaller seq_len"
            )

    @classmethod
    def random(cls, data: bytes, seq_len: int, count: int = 0, seed: int = 0) -> "ByteWindows":
        """``count`` windows at uniformly random starts drawn with ``seed`` (default count: ``len // seq_len``,
        about one pass over the bytes)."""
        cls._check(data, seq_len, "training")
        count = count or max(1, len(data) // seq_len)
        rng = np.random.default_rng(seed)
        starts = rng.integers(0, len(data) - seq_len, size=count)  # last start: len - seq_len - 1
        return cls(data, seq_len, torch.from_numpy(starts))

    @classmethod
    def sequential(cls, data: bytes, seq_len: int) -> "ByteWindows":
        """Non-overlapping windows at 0, seq_len, 2 seq_len, ...: every byte after the first is a target once
        (a trailing remainder shorter than a window is left out)."""
        cls._check(data, seq_len, "validation")
        count = (len(data) - 1) // seq_len
        return cls(data, seq_len, torch.arange(count) * seq_len)

    def __len__(self) -> int:
        return self.starts.shape[0]

    def __getitem__(self, index) -> tuple[Tensor, Tensor]:
        starts = self.starts[index]
        window = self.data[starts[..., None] + self._span].long()  # (..., seq_len + 1)
        return window[..., :-1], window[..., 1:]


def bits_per_byte(nats: float, n_bytes: float) -> float:
    """Mean cross-entropy in bits per byte from a sum of natural-log losses over ``n_bytes`` predicted bytes.

    >>> round(bits_per_byte(256 * math.log(256), 256), 6)
    8.0
    """
    return nats / max(n_bytes, 1.0) / math.log(2)
