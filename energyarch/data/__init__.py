"""Datasets for energyarch experiments: Sudoku (generated or Palm et al. CSV), image classification and byte-level
text (an embedded corpus or local UTF-8 files).

>>> from energyarch.data import generate_dataset, SudokuDataset, load_digits_dataset
>>> quizzes, solutions = generate_dataset(8, seed=0, processes=1, progress=False)
>>> len(SudokuDataset(quizzes, solutions))
8
>>> load_digits_dataset().num_classes
10

Nothing here downloads anything: image loaders read files already on disk (Fashion-MNIST from the Debian package
``dataset-fashion-mnist``, CIFAR from the extracted python archives) and say where to get them when absent.
"""

from .images import FASHION_MNIST_ROOT as FASHION_MNIST_ROOT
from .images import ImageData as ImageData
from .images import RestrictedUnpickler as RestrictedUnpickler
from .images import load_cifar as load_cifar
from .images import load_digits_dataset as load_digits_dataset
from .images import load_fashion_mnist as load_fashion_mnist
from .images import make_loaders as make_loaders
from .images import read_idx as read_idx
from .images import restricted_pickle_load as restricted_pickle_load
from .sudoku import SudokuDataset as SudokuDataset
from .sudoku import check_valid_solution as check_valid_solution
from .sudoku import count_solutions as count_solutions
from .sudoku import default_cache_dir as default_cache_dir
from .sudoku import generate_dataset as generate_dataset
from .sudoku import generate_puzzle as generate_puzzle
from .sudoku import load_or_generate as load_or_generate
from .sudoku import load_palm_csv as load_palm_csv
from .sudoku import random_full_grid as random_full_grid
from .sudoku import solve as solve
from .sudoku import sudoku_metrics as sudoku_metrics
from .sudoku import valid_solutions as valid_solutions
from .text import ByteWindows as ByteWindows
from .text import TextCorpus as TextCorpus
from .text import bits_per_byte as bits_per_byte
from .text import load_text as load_text
from .text import split_bytes as split_bytes
from .text import stdlib_corpus as stdlib_corpus
from .text import text_corpus as text_corpus

__all__ = [
    "ByteWindows",
    "FASHION_MNIST_ROOT",
    "ImageData",
    "RestrictedUnpickler",
    "SudokuDataset",
    "TextCorpus",
    "bits_per_byte",
    "check_valid_solution",
    "count_solutions",
    "default_cache_dir",
    "generate_dataset",
    "generate_puzzle",
    "load_cifar",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_or_generate",
    "load_palm_csv",
    "load_text",
    "make_loaders",
    "random_full_grid",
    "read_idx",
    "restricted_pickle_load",
    "solve",
    "split_bytes",
    "stdlib_corpus",
    "sudoku_metrics",
    "text_corpus",
    "valid_solutions",
]
