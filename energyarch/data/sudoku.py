"""Sudoku data: a fast bitmask solver, an RRN-style puzzle generator with a disk cache, and loaders.

Grids are flat sequences of 81 digits in row-major order; ``0`` marks a blank. Everything here is pure Python
plus numpy (the solver is plain Python ints and bitmasks), so generation runs anywhere without a compiler.

>>> from energyarch.data.sudoku import count_solutions, solve
>>> quiz = "530070000600195000098000060800060003400803001700020006060000280000419005000080079"
>>> count_solutions(quiz)
1
>>> "".join(map(str, solve(quiz)))[:9]
'534678912'

The generator follows the Recurrent Relational Networks recipe (Palm et al., 2018): draw a random full grid,
remove givens in random order while the solution stays unique until the puzzle is minimal, then add givens back
from the solution until a target count drawn uniformly from ``[min_givens, max_givens]`` is reached.

>>> import random
>>> from energyarch.data.sudoku import generate_puzzle
>>> quiz, solution = generate_puzzle(random.Random(0), 25, 30)
>>> 25 <= int((quiz > 0).sum()) <= 30, count_solutions(quiz)
(True, 1)
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._atomic import atomic_open
from ..errors import ConfigError, DataError, ShapeError

__all__ = [
    "SudokuDataset",
    "check_valid_solution",
    "count_solutions",
    "default_cache_dir",
    "generate_dataset",
    "generate_puzzle",
    "load_or_generate",
    "load_palm_csv",
    "random_full_grid",
    "solve",
    "sudoku_metrics",
    "valid_solutions",
]

#: Bumped whenever the generator changes in a way that changes its output for a given seed (invalidates caches).
GENERATOR_VERSION = 1

#: Fewest givens a uniquely solvable Sudoku can have (McGuire et al., 2012).
MIN_POSSIBLE_GIVENS = 17

_ALL = 0x1FF  # bits 0..8 stand for digits 1..9
_ROW = [i // 9 for i in range(81)]
_COL = [i % 9 for i in range(81)]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
_POP = [bin(m).count("1") for m in range(512)]
# For every candidate mask, the list of (bit, digit) pairs it contains, in increasing digit order.
_BITS = [[(1 << k, k + 1) for k in range(9) if m >> k & 1] for m in range(512)]

Grid = Sequence[int] | str | np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------------------------
# Solver
# --------------------------------------------------------------------------------------------------------------


def _as_cells(grid: Grid, name: str = "grid") -> list[int]:
    """Return ``grid`` as a list of 81 ints in 0..9 (``'.'`` is a blank in strings); raise on anything else."""
    if isinstance(grid, str):
        s = grid.strip()
        if len(s) != 81 or any(ch not in "0123456789." for ch in s):
            raise DataError(
                f"{name}: expected a string of 81 characters from '0'-'9' or '.', got {len(s)} characters "
                f"({s[:20]!r}...); write one digit per cell in row-major order, 0 or '.' for a blank."
            )
        return [0 if ch == "." else ord(ch) - 48 for ch in s]
    if isinstance(grid, torch.Tensor):
        grid = grid.detach().cpu().numpy()
    arr = np.asarray(grid)
    if arr.size != 81 or arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape != (9, 9)):
        raise ShapeError(
            f"{name}: expected 81 cells (shape (81,) or (9, 9)), got shape {tuple(arr.shape)}; pass one board."
        )
    if arr.dtype.kind not in "iub":
        raise DataError(f"{name}: expected integer digits 0..9, got dtype {arr.dtype}; convert with .astype(int).")
    cells = [int(v) for v in arr.reshape(81)]
    bad = [v for v in cells if not 0 <= v <= 9]
    if bad:
        raise DataError(f"{name}: cell values must be digits 0..9 (0 = blank), found {bad[0]}; fix the board.")
    return cells


def _setup(cells: list[int]) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """Build row/column/box masks and the list of blanks; ``None`` when the givens already clash."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    empties: list[int] = []
    for i, v in enumerate(cells):
        if v == 0:
            empties.append(i)
            continue
        bit = 1 << (v - 1)
        r, c, b = _ROW[i], _COL[i], _BOX[i]
        if (rows[r] | cols[c] | boxes[b]) & bit:
            return None
        rows[r] |= bit
        cols[c] |= bit
        boxes[b] |= bit
    return rows, cols, boxes, empties


def _search(
    cells: list[int],
    rows: list[int],
    cols: list[int],
    boxes: list[int],
    empties: list[int],
    limit: int,
    rng: random.Random | None,
) -> int:
    """Depth-first search over the most constrained blank; returns the number of solutions found (<= limit).

    When ``limit`` is reached the first solution found is left written in ``cells`` (the search stops there).
    """
    n = len(empties)
    if n == 0:
        return 1
    # Most-constrained-cell heuristic: pick the blank with the fewest candidates (globals bound to locals: hot).
    R, C, B, POP = _ROW, _COL, _BOX, _POP
    best_k, best_n, best_m = -1, 10, 0
    for k in range(n):
        i = empties[k]
        m = 0x1FF & ~(rows[R[i]] | cols[C[i]] | boxes[B[i]])
        p = POP[m]
        if p < best_n:
            if p == 0:
                return 0
            best_k, best_n, best_m = k, p, m
            if p == 1:
                break
    i = empties[best_k]
    empties[best_k] = empties[n - 1]
    empties.pop()
    r, c, b = _ROW[i], _COL[i], _BOX[i]
    options = _BITS[best_m]
    if rng is not None and len(options) > 1:
        options = options[:]
        rng.shuffle(options)
    found = 0
    for bit, digit in options:
        cells[i] = digit
        rows[r] |= bit
        cols[c] |= bit
        boxes[b] |= bit
        found += _search(cells, rows, cols, boxes, empties, limit - found, rng)
        if found >= limit:
            # Leave the solution in place; the caller must not reuse the masks.
            return found
        rows[r] ^= bit
        cols[c] ^= bit
        boxes[b] ^= bit
    cells[i] = 0
    empties.append(i)
    empties[best_k], empties[n - 1] = empties[n - 1], empties[best_k]
    return found


def count_solutions(grid: Grid, limit: int = 2) -> int:
    """Count the solutions of a puzzle, stopping at ``limit`` (the default 2 answers "is it unique?").

    >>> count_solutions("0" * 81, limit=2)
    2
    """
    if limit < 1:
        raise ConfigError(f"count_solutions: limit must be >= 1, got {limit}; use limit=2 to test uniqueness.")
    cells = _as_cells(grid)
    state = _setup(cells)
    if state is None:
        return 0
    return _search(cells, *state, limit, None)


def solve(grid: Grid) -> list[int] | None:
    """Return one solution as a list of 81 digits 1..9, or ``None`` when the puzzle has none.

    >>> solve("0" * 81)[:9]
    [1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    cells = _as_cells(grid)
    state = _setup(cells)
    if state is None or _search(cells, *state, 1, None) == 0:
        return None
    return cells


def random_full_grid(rng: random.Random) -> list[int]:
    """A uniformly shuffled-search random complete grid (randomised backtracking from the empty board)."""
    cells = [0] * 81
    state = _setup(cells)
    assert state is not None
    _search(cells, *state, 1, rng)
    return cells


def _has_other_solution(cells: list[int], i: int, digit: int) -> bool:
    """Whether the puzzle ``cells`` (cell ``i`` blank, unique solution has ``digit`` there) has another solution.

    Cheaper than counting to 2: any other solution must put a different digit in cell ``i``, so try each.
    """
    state = _setup(cells)
    assert state is not None
    rows, cols, boxes, empties = state
    r, c, b = _ROW[i], _COL[i], _BOX[i]
    free = _ALL & ~(rows[r] | cols[c] | boxes[b]) & ~(1 << (digit - 1))
    empties.remove(i)
    for bit, d in _BITS[free]:
        trial = cells[:]
        trial[i] = d
        rr, cc, bb = rows[:], cols[:], boxes[:]
        rr[r] |= bit
        cc[c] |= bit
        bb[b] |= bit
        if _search(trial, rr, cc, bb, empties[:], 1, None):
            return True
    return False


# --------------------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------------------


def _check_givens(min_givens: int, max_givens: int) -> None:
    for name, v in (("min_givens", min_givens), ("max_givens", max_givens)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{name} must be an int, got {v!r} ({type(v).__name__}); e.g. {name}=22.")
    if not MIN_POSSIBLE_GIVENS <= min_givens <= max_givens <= 81:
        raise ConfigError(
            f"givens range: need {MIN_POSSIBLE_GIVENS} <= min_givens <= max_givens <= 81, got "
            f"min_givens={min_givens}, max_givens={max_givens}; no unique Sudoku has fewer than 17 givens "
            f"(the default range is 22..34)."
        )


def _as_random(rng: random.Random | np.random.Generator | int | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(0, 2**63)))
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return random.Random(rng)
    raise ConfigError(
        f"rng must be a random.Random, a numpy Generator, an int seed or None, got {type(rng).__name__}; "
        f"e.g. generate_puzzle(random.Random(0), 22, 34)."
    )


def generate_puzzle(
    rng: random.Random | np.random.Generator | int | None, min_givens: int, max_givens: int, minimal: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one puzzle with a unique solution; returns ``(quiz, solution)`` as uint8 arrays of shape (81,).

    ``minimal=True`` (RRN-style): remove givens in random order while the solution stays unique until no given
    can be removed, then add givens back from the solution at random until a target drawn uniformly from
    ``[min_givens, max_givens]`` is reached. A minimal puzzle that already has more givens than the target is
    kept as it is, so the count is always >= ``min_givens`` and exceeds ``max_givens`` only if the minimal
    puzzle does (minimal puzzles have about 20-28 givens, so essentially never for ``max_givens >= 30``).

    ``minimal=False`` (faster): remove cells in random order, skipping those whose removal breaks uniqueness,
    until the target is reached (or every cell has been tried).

    >>> q, s = generate_puzzle(0, 30, 30, minimal=False)
    >>> int((q > 0).sum()), bool(((q == s) | (q == 0)).all())
    (30, True)
    """
    _check_givens(min_givens, max_givens)
    rng = _as_random(rng)
    solution = random_full_grid(rng)
    target = rng.randint(min_givens, max_givens)
    cells = solution[:]
    givens = 81
    order = list(range(81))
    rng.shuffle(order)
    for i in order:
        if not minimal and givens <= target:
            break
        digit = cells[i]
        cells[i] = 0
        # With >= 78 givens removing one more can never create a second solution; skip the search there.
        if givens > 78 or not _has_other_solution(cells, i, digit):
            givens -= 1
        else:
            cells[i] = digit
    if minimal and givens < target:
        blanks = [i for i in range(81) if cells[i] == 0]
        for i in rng.sample(blanks, target - givens):
            cells[i] = solution[i]
    return np.asarray(cells, dtype=np.uint8), np.asarray(solution, dtype=np.uint8)


_CHUNK = 16  # puzzles per worker task; fixed so the output does not depend on the number of processes


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, chunk]).generate_state(2, dtype=np.uint64)[0])


def _generate_chunk(args: tuple[int, int, int, int, int, bool]) -> tuple[np.ndarray, np.ndarray]:
    """Worker: generate ``count`` puzzles for chunk ``chunk`` (seeded from ``(seed, chunk)`` only)."""
    seed, chunk, count, min_givens, max_givens, minimal = args
    rng = random.Random(_chunk_seed(seed, chunk))
    pairs = [generate_puzzle(rng, min_givens, max_givens, minimal) for _ in range(count)]
    return np.stack([q for q, _ in pairs]), np.stack([s for _, s in pairs])


def generate_dataset(
    n: int,
    min_givens: int = 22,
    max_givens: int = 34,
    seed: int = 0,
    minimal: bool = True,
    processes: int = 2,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` distinct puzzles; returns ``(quizzes, solutions)``, uint8 arrays of shape (n, 81), 0 = blank.

    Work is cut into fixed chunks of 16 puzzles, chunk ``k`` seeded from ``(seed, k)``, so the result depends on
    ``seed`` (and the other arguments) but not on ``processes``. Duplicate quizzes are dropped (first kept) and
    replaced from further chunks. ``processes=1`` runs in this process (no pool).

    >>> q, s = generate_dataset(4, seed=1, processes=1, progress=False)
    >>> q.shape, q.dtype.name, bool((s > 0).all())
    ((4, 81), 'uint8', True)
    """
    for name, v in (("n", n), ("seed", seed), ("processes", processes)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"generate_dataset: {name} must be an int, got {v!r}; e.g. {name}=2.")
    if n < 0:
        raise ConfigError(f"generate_dataset: n must be >= 0, got {n}; pass the number of puzzles wanted.")
    if seed < 0:
        raise ConfigError(f"generate_dataset: seed must be >= 0, got {seed}; use a non-negative int.")
    if processes < 1:
        raise ConfigError(f"generate_dataset: processes must be >= 1, got {processes}; use 1 to run in-process.")
    _check_givens(min_givens, max_givens)

    quizzes = np.zeros((n, 81), dtype=np.uint8)
    solutions = np.zeros((n, 81), dtype=np.uint8)
    if n == 0:
        return quizzes, solutions
    seen: set[bytes] = set()
    have = 0
    next_chunk = 0

    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc="sudoku", unit="puzzle", disable=not progress, leave=False)
    pool = multiprocessing.get_context().Pool(processes) if processes > 1 else None
    try:
        while have < n:
            missing = n - have
            n_chunks = -(-missing // _CHUNK)
            tasks = [
                (int(seed), next_chunk + k, _CHUNK, min_givens, max_givens, bool(minimal)) for k in range(n_chunks)
            ]
            next_chunk += n_chunks
            results = pool.imap(_generate_chunk, tasks) if pool is not None else map(_generate_chunk, tasks)
            for q_chunk, s_chunk in results:
                for q, s in zip(q_chunk, s_chunk):
                    key = q.tobytes()
                    if have >= n or key in seen:
                        continue
                    seen.add(key)
                    quizzes[have], solutions[have] = q, s
                    have += 1
                    bar.update(1)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()
    return quizzes, solutions


# --------------------------------------------------------------------------------------------------------------
# Disk cache
# --------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$ENERGYARCH_CACHE`` if set, else ``~/.cache/energyarch``."""
    env = os.environ.get("ENERGYARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "energyarch"


_CACHE_KEYS = ("train_quizzes", "train_solutions", "test_quizzes", "test_solutions")


def load_or_generate(
    cache_dir: str | os.PathLike[str] | None = None,
    n_train: int = 9000,
    n_test: int = 1000,
    seed: int = 0,
    min_givens: int = 22,
    max_givens: int = 34,
    minimal: bool = True,
    processes: int = 2,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Load a generated train/test split from ``cache_dir``, generating and caching it on the first call.

    The file is ``sudoku-<hash>.npz`` where the hash covers every argument that changes the data (not
    ``processes``: the output does not depend on it). It is written atomically (temporary file, then
    ``os.replace``). Train and test puzzles are all distinct. Returns a dict with ``train_quizzes``,
    ``train_solutions``, ``test_quizzes``, ``test_solutions`` (uint8, shape (n, 81)) and ``path``.

    >>> import tempfile
    >>> d = load_or_generate(tempfile.mkdtemp(), n_train=3, n_test=2, processes=1, progress=False)
    >>> d["train_quizzes"].shape, d["test_solutions"].shape
    ((3, 81), (2, 81))
    """
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ConfigError(f"load_or_generate: {name} must be an int >= 0, got {v!r}; e.g. {name}=1000.")
    _check_givens(min_givens, max_givens)
    params: dict[str, Any] = {
        "generator_version": GENERATOR_VERSION,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "seed": int(seed),
        "min_givens": int(min_givens),
        "max_givens": int(max_givens),
        "minimal": bool(minimal),
    }
    blob = json.dumps(params, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / f"sudoku-{digest}.npz"

    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                out = {k: f[k] for k in _CACHE_KEYS}
                stored = str(f["params"])
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(
                f"sudoku cache {path}: cannot read it ({exc}); delete the file and it will be regenerated."
            ) from exc
        expected = {"train": n_train, "test": n_test}
        for split, count in expected.items():
            for kind in ("quizzes", "solutions"):
                arr = out[f"{split}_{kind}"]
                if arr.shape != (count, 81) or arr.dtype != np.uint8:
                    raise DataError(
                        f"sudoku cache {path}: {split}_{kind} has shape {arr.shape} and dtype {arr.dtype}, "
                        f"expected ({count}, 81) uint8; delete the file and it will be regenerated."
                    )
        if stored != blob:
            raise DataError(
                f"sudoku cache {path}: stored parameters {stored} differ from the requested {blob}; "
                f"delete the file and it will be regenerated."
            )
        out_dict: dict[str, Any] = dict(out)
        out_dict["path"] = path
        return out_dict

    quizzes, solutions = generate_dataset(
        n_train + n_test, min_givens, max_givens, seed=seed, minimal=minimal, processes=processes, progress=progress
    )
    out = {
        "train_quizzes": quizzes[:n_train],
        "train_solutions": solutions[:n_train],
        "test_quizzes": quizzes[n_train:],
        "test_solutions": solutions[n_train:],
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            np.savez_compressed(fh, params=np.array(blob), **out)
    except OSError as exc:
        raise DataError(
            f"sudoku cache directory {directory}: cannot write there ({exc}); pass a writable cache_dir or set "
            f"ENERGYARCH_CACHE."
        ) from exc
    out_dict = dict(out)
    out_dict["path"] = path
    return out_dict


# --------------------------------------------------------------------------------------------------------------
# Palm et al. CSV
# --------------------------------------------------------------------------------------------------------------


def valid_solutions(grids: np.ndarray | torch.Tensor) -> np.ndarray:
    """Vectorised check: for grids of shape (N, 81), whether each is a complete valid Sudoku (bool array (N,))."""
    if isinstance(grids, torch.Tensor):
        grids = grids.detach().cpu().numpy()
    g = np.asarray(grids)
    if g.ndim != 2 or g.shape[1] != 81:
        raise ShapeError(f"valid_solutions: expected shape (N, 81), got {tuple(g.shape)}; flatten each board.")
    g = g.astype(np.int64)
    in_range = ((g >= 1) & (g <= 9)).all(axis=1)
    bits = np.where((g >= 1) & (g <= 9), np.left_shift(1, np.clip(g, 1, 9) - 1), 0).reshape(-1, 9, 9)
    rows = np.bitwise_or.reduce(bits, axis=2)
    cols = np.bitwise_or.reduce(bits, axis=1)
    boxes = np.bitwise_or.reduce(bits.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9), axis=2)
    ok = (rows == _ALL).all(axis=1) & (cols == _ALL).all(axis=1) & (boxes == _ALL).all(axis=1)
    return in_range & ok


def check_valid_solution(grid: Grid) -> bool:
    """Whether ``grid`` (81 cells or 9×9) is a complete Sudoku: digits 1..9, no repeat in a row, column or box.

    >>> check_valid_solution(solve("0" * 81))
    True
    >>> check_valid_solution([1] * 81)
    False
    """
    cells = _as_cells(grid)
    return bool(valid_solutions(np.asarray(cells).reshape(1, 81))[0])


def load_palm_csv(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load a Recurrent Relational Networks CSV (``train.csv`` etc.): one ``quiz,solution`` pair per line.

    Each field is 81 digits; ``0`` or ``.`` marks a blank in the quiz. Blank lines are skipped and a first line
    ``quizzes,solutions`` is allowed. Returns ``(quizzes, solutions)``, uint8 arrays of shape (N, 81).
    Any malformed row raises :class:`DataError` with the file and 1-based line number.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "t.csv"
    >>> s = "".join(map(str, solve("0" * 81)))
    >>> _ = p.write_text("quizzes,solutions\\n" + "0" + s[1:] + "," + s + "\\n")
    >>> q, sol = load_palm_csv(p)
    >>> q.shape, int(q[0, 0]), int(sol[0, 0])
    ((1, 81), 0, 1)
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Sudoku CSV {p}: file not found; pass the path to a Palm et al. csv (quiz,solution).")
    line_numbers: list[int] = []
    quiz_chunks: list[bytes] = []
    sol_chunks: list[bytes] = []
    with open(p, "rb") as fh:
        first = True
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            if first:
                first = False
                if line.replace(b" ", b"").lower() in (b"quizzes,solutions", b"quiz,solution"):
                    continue
            fields = line.split(b",")
            if len(fields) != 2:
                raise DataError(
                    f"{p}, line {lineno}: expected 2 comma-separated fields (quiz,solution), got {len(fields)}; "
                    f"write each row as 81 quiz digits, a comma, 81 solution digits."
                )
            quiz, sol = fields[0].strip(), fields[1].strip()
            for what, field in (("quiz", quiz), ("solution", sol)):
                if len(field) != 81:
                    raise DataError(
                        f"{p}, line {lineno}: {what} has {len(field)} characters, expected 81 "
                        f"({field[:20].decode(errors='replace')!r}...); write one digit per cell."
                    )
            line_numbers.append(lineno)
            quiz_chunks.append(quiz)
            sol_chunks.append(sol)
    n = len(line_numbers)
    if n == 0:
        raise DataError(f"Sudoku CSV {p}: no puzzles found (empty file?); expected lines of 'quiz,solution'.")
    q = np.frombuffer(b"".join(quiz_chunks), dtype=np.uint8).reshape(n, 81).copy()
    s = np.frombuffer(b"".join(sol_chunks), dtype=np.uint8).reshape(n, 81).copy()
    q[q == ord(".")] = ord("0")

    def fail(mask: np.ndarray, message: Callable[[int], str]) -> None:
        if mask.any():
            row = int(np.argmax(mask))
            raise DataError(f"{p}, line {line_numbers[row]}: {message(row)}")

    def first_bad(arr: np.ndarray, row: int, bad: np.ndarray) -> str:
        col = int(np.argmax(bad[row]))
        return f"cell {col + 1} is {chr(arr[row, col])!r}"

    bad_q = (q < ord("0")) | (q > ord("9"))
    fail(bad_q.any(axis=1), lambda r: f"quiz has a non-digit ({first_bad(q, r, bad_q)}); use 0-9, 0 or '.' for blank.")
    bad_s = (s < ord("0")) | (s > ord("9"))
    fail(bad_s.any(axis=1), lambda r: f"solution has a non-digit ({first_bad(s, r, bad_s)}); use digits 1-9.")
    q -= ord("0")
    s -= ord("0")
    zero = s == 0
    fail(
        zero.any(axis=1),
        lambda r: f"solution has a 0 at cell {int(np.argmax(zero[r])) + 1}; a solution must be complete (1-9).",
    )
    clash = (q != 0) & (q != s)
    fail(
        clash.any(axis=1),
        lambda r: (
            f"quiz disagrees with solution at cell {int(np.argmax(clash[r])) + 1} "
            f"(quiz {int(q[r, np.argmax(clash[r])])}, solution {int(s[r, np.argmax(clash[r])])}); "
            f"fix the row or swap the columns."
        ),
    )
    invalid = ~valid_solutions(s)
    fail(invalid, lambda r: "solution repeats a digit in a row, column or box; it is not a valid Sudoku.")
    return q, s


# --------------------------------------------------------------------------------------------------------------
# Torch dataset and metrics
# --------------------------------------------------------------------------------------------------------------


class SudokuDataset(Dataset):
    """Pairs ``(quiz, solution)``: ``LongTensor(81)`` each, quiz 0..9 (0 = blank), solution 1..9.

    >>> q, s = generate_dataset(2, seed=0, processes=1, progress=False)
    >>> ds = SudokuDataset(q, s)
    >>> len(ds), ds[0][0].dtype, int(ds[0][1].min()) >= 1
    (2, torch.int64, True)
    """

    def __init__(self, quizzes: np.ndarray | torch.Tensor, solutions: np.ndarray | torch.Tensor) -> None:
        q = torch.as_tensor(np.asarray(quizzes) if not isinstance(quizzes, torch.Tensor) else quizzes).long()
        s = torch.as_tensor(np.asarray(solutions) if not isinstance(solutions, torch.Tensor) else solutions).long()
        if q.dim() == 3 and q.shape[1:] == (9, 9):
            q = q.reshape(-1, 81)
        if s.dim() == 3 and s.shape[1:] == (9, 9):
            s = s.reshape(-1, 81)
        if q.dim() != 2 or q.shape[1] != 81 or q.shape != s.shape:
            raise ShapeError(
                f"SudokuDataset: quizzes {tuple(q.shape)} and solutions {tuple(s.shape)} must both be (N, 81); "
                f"pass the arrays from generate_dataset or load_palm_csv."
            )
        if q.numel() and (int(q.min()) < 0 or int(q.max()) > 9):
            raise DataError(f"SudokuDataset: quiz values must be 0..9, got range {int(q.min())}..{int(q.max())}.")
        if s.numel() and (int(s.min()) < 1 or int(s.max()) > 9):
            raise DataError(
                f"SudokuDataset: solution values must be 1..9, got range {int(s.min())}..{int(s.max())}; "
                f"solutions must be complete boards."
            )
        self.quizzes = q
        self.solutions = s

    @classmethod
    def from_cache(cls, split: str = "train", **kwargs: Any) -> SudokuDataset:
        """Build from :func:`load_or_generate` (``split`` is ``'train'`` or ``'test'``; kwargs go through)."""
        if split not in ("train", "test"):
            raise ConfigError(f"SudokuDataset.from_cache: split must be 'train' or 'test', got {split!r}.")
        d = load_or_generate(**kwargs)
        return cls(d[f"{split}_quizzes"], d[f"{split}_solutions"])

    def __len__(self) -> int:
        return self.quizzes.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.quizzes[index], self.solutions[index]


def sudoku_metrics(
    pred: torch.Tensor | np.ndarray, quiz: torch.Tensor | np.ndarray, solution: torch.Tensor | np.ndarray
) -> dict[str, float]:
    """Accuracy on the blanks: ``board_acc`` (boards with every blank right) and ``cell_acc`` (blank cells right).

    ``pred``, ``quiz`` and ``solution`` hold digits, shape (B, 81) (or (B, 9, 9)); only cells where ``quiz == 0``
    count. A board without blanks counts as solved; with no blank at all ``cell_acc`` is 1.0.

    >>> s = torch.tensor([solve("0" * 81)])
    >>> q = s.clone(); q[0, :2] = 0
    >>> p = s.clone(); p[0, 1] = 5
    >>> sudoku_metrics(p, q, s)
    {'board_acc': 0.0, 'cell_acc': 0.5}
    """
    p, q, s = (torch.as_tensor(np.asarray(t)) if not isinstance(t, torch.Tensor) else t for t in (pred, quiz, solution))
    p, q, s = (t.reshape(t.shape[0], -1) if t.dim() == 3 else t for t in (p, q, s))
    if not (p.shape == q.shape == s.shape) or p.dim() != 2 or p.shape[1] != 81:
        raise ShapeError(
            f"sudoku_metrics: pred {tuple(p.shape)}, quiz {tuple(q.shape)}, solution {tuple(s.shape)} must all be "
            f"(B, 81) digits; for logits over digits 1..9 pass logits.argmax(-1) + 1."
        )
    blank = q == 0
    wrong = (p != s) & blank
    n_blank = int(blank.sum())
    board_acc = float((~wrong.any(dim=1)).float().mean()) if p.shape[0] else float("nan")
    cell_acc = 1.0 - int(wrong.sum()) / n_blank if n_blank else 1.0
    return {"board_acc": board_acc, "cell_acc": cell_acc}
