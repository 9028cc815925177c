"""Sudoku data: solver, generator, cache, Palm et al. CSV loader, dataset and metrics."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from energyarch.data import sudoku as sd
from energyarch.data import (
    SudokuDataset,
    check_valid_solution,
    count_solutions,
    generate_dataset,
    generate_puzzle,
    load_or_generate,
    load_palm_csv,
    solve,
    sudoku_metrics,
    valid_solutions,
)
from energyarch.errors import ConfigError, DataError, ShapeError

# Wikipedia's example puzzle and its solution.
WIKI_QUIZ = "530070000600195000098000060800060003400803001700020006060000280000419005000080079"
WIKI_SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
# Arto Inkala's "world's hardest Sudoku" (unique solution).
INKALA = "800000000003600000070090200050007000000045700000100030001000068008500010090000400"
INKALA_SOLUTION = "812753649943682175675491283154237896369845721287169534521974368438526917796318452"


def digits(s: str) -> list[int]:
    return [int(ch) for ch in s]


# ---------------------------------------------------------------------------------------------- solver


@pytest.mark.parametrize(
    ("quiz", "solution"), [(WIKI_QUIZ, WIKI_SOLUTION), (INKALA, INKALA_SOLUTION)], ids=["wikipedia", "inkala"]
)
def test_solver_finds_the_known_unique_solution(quiz: str, solution: str) -> None:
    assert solve(quiz) == digits(solution)
    assert count_solutions(quiz) == 1
    assert count_solutions(quiz, limit=10) == 1
    # Same answer from a numpy 9x9 board and from a '.'-blank string.
    assert solve(np.array(digits(quiz)).reshape(9, 9)) == digits(solution)
    assert solve(quiz.replace("0", ".")) == digits(solution)


def test_solver_counts_multiple_and_zero_solutions() -> None:
    assert count_solutions("0" * 81, limit=2) == 2
    assert count_solutions("0" * 81, limit=7) == 7
    clash = "11" + "0" * 79  # two 1s in the first row
    assert count_solutions(clash) == 0
    assert solve(clash) is None
    # No two givens clash, yet cell (0, 8) can only be 9 and column 8 already has a 9: no solution.
    dead = [0] * 81
    dead[0:8] = range(1, 9)
    dead[4 * 9 + 8] = 9
    assert sd._setup(dead[:]) is not None
    assert count_solutions(dead) == 0
    assert solve(dead) is None
    with pytest.raises(ConfigError, match="limit"):
        count_solutions(WIKI_QUIZ, limit=0)


def _deadly_rectangle(grid: list[int]) -> list[int] | None:
    """Four cells a b / b a spanning exactly two boxes; blanking them leaves exactly two solutions."""
    for r1 in range(9):
        for r2 in range(r1 + 1, 9):
            for c1 in range(9):
                for c2 in range(c1 + 1, 9):
                    same_band, same_stack = r1 // 3 == r2 // 3, c1 // 3 == c2 // 3
                    if same_band == same_stack:
                        continue
                    a, b = grid[9 * r1 + c1], grid[9 * r1 + c2]
                    if grid[9 * r2 + c1] == b and grid[9 * r2 + c2] == a:
                        return [9 * r1 + c1, 9 * r1 + c2, 9 * r2 + c1, 9 * r2 + c2]
    return None


def test_solver_counts_exactly_two_for_a_deadly_pattern() -> None:
    rng = random.Random(3)
    grid = digits(WIKI_SOLUTION)
    cells = _deadly_rectangle(grid)
    while cells is None:
        grid = sd.random_full_grid(rng)
        cells = _deadly_rectangle(grid)
    quiz = grid[:]
    for i in cells:
        quiz[i] = 0
    assert count_solutions(quiz, limit=10) == 2


def test_random_full_grid_is_valid_and_seeded() -> None:
    a = sd.random_full_grid(random.Random(1))
    b = sd.random_full_grid(random.Random(1))
    c = sd.random_full_grid(random.Random(2))
    assert a == b != c
    assert check_valid_solution(a) and check_valid_solution(c)


def test_check_valid_solution() -> None:
    good = digits(WIKI_SOLUTION)
    assert check_valid_solution(good)
    assert check_valid_solution(np.array(good).reshape(9, 9))
    assert check_valid_solution(torch.tensor(good))
    swapped = good[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]  # row still fine, columns/boxes broken
    assert not check_valid_solution(swapped)
    assert not check_valid_solution(digits(WIKI_QUIZ))  # blanks
    # Latin square that is not a Sudoku (rows and columns fine, boxes not).
    latin = [(r + c) % 9 + 1 for r in range(9) for c in range(9)]
    assert not check_valid_solution(latin)
    assert valid_solutions(np.array([good, swapped, latin])).tolist() == [True, False, False]
    with pytest.raises(ShapeError, match="81 cells"):
        check_valid_solution([1, 2, 3])
    with pytest.raises(DataError, match="0..9"):
        check_valid_solution([10] * 81)


# ---------------------------------------------------------------------------------------------- generator


def _check_puzzle(quiz: np.ndarray, solution: np.ndarray, lo: int, hi: int) -> None:
    assert quiz.dtype == solution.dtype == np.uint8 and quiz.shape == solution.shape == (81,)
    assert lo <= int((quiz > 0).sum()) <= hi
    assert check_valid_solution(solution)
    given = quiz > 0
    assert (quiz[given] == solution[given]).all()
    assert count_solutions(quiz) == 1
    assert solve(quiz) == solution.tolist()


@pytest.mark.parametrize("minimal", [True, False])
def test_generated_puzzles_are_unique_in_range_and_consistent(minimal: bool) -> None:
    rng = random.Random(123)
    for _ in range(6):
        quiz, solution = generate_puzzle(rng, 24, 30, minimal=minimal)
        _check_puzzle(quiz, solution, 24, 30)


def test_minimal_puzzles_are_minimal() -> None:
    # Target 17 is below any random minimal puzzle, so the minimal puzzle is returned untouched.
    quiz, solution = generate_puzzle(random.Random(7), 17, 17, minimal=True)
    assert count_solutions(quiz) == 1
    givens = np.flatnonzero(quiz)
    assert 17 <= len(givens) < 40
    for i in givens:
        reduced = quiz.copy()
        reduced[i] = 0
        assert count_solutions(reduced) == 2, f"given at cell {i} could be removed"


def test_generate_puzzle_is_seeded_and_validates_arguments() -> None:
    a = generate_puzzle(5, 22, 34)
    b = generate_puzzle(random.Random(5), 22, 34)
    assert all((x == y).all() for x, y in zip(a, b))
    with pytest.raises(ConfigError, match="min_givens"):
        generate_puzzle(0, 10, 20)
    with pytest.raises(ConfigError, match="max_givens"):
        generate_puzzle(0, 30, 25)
    with pytest.raises(ConfigError, match="rng"):
        generate_puzzle("seed", 22, 34)  # type: ignore[arg-type]


def test_generate_dataset_shapes_uniqueness_and_determinism() -> None:
    q1, s1 = generate_dataset(20, min_givens=26, max_givens=32, seed=3, processes=1, progress=False)
    assert q1.shape == s1.shape == (20, 81) and q1.dtype == s1.dtype == np.uint8
    assert len({row.tobytes() for row in q1}) == 20
    assert valid_solutions(s1).all()
    givens = (q1 > 0).sum(axis=1)
    assert givens.min() >= 26 and givens.max() <= 32
    assert ((q1 == 0) | (q1 == s1)).all()
    # Same seed, same data, whatever the number of processes; another seed gives other puzzles.
    q2, s2 = generate_dataset(20, min_givens=26, max_givens=32, seed=3, processes=2, progress=False)
    np.testing.assert_array_equal(q1, q2)
    np.testing.assert_array_equal(s1, s2)
    q3, _ = generate_dataset(20, min_givens=26, max_givens=32, seed=4, processes=1, progress=False)
    assert not np.array_equal(q1, q3)
    # A prefix of a larger request is the smaller request (chunks are seeded independently).
    q4, _ = generate_dataset(5, min_givens=26, max_givens=32, seed=3, processes=1, progress=False)
    np.testing.assert_array_equal(q4, q1[:5])


def test_generate_dataset_drops_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def repeating_chunk(args: tuple[int, int, int, int, int, bool]) -> tuple[np.ndarray, np.ndarray]:
        seed, chunk, count, lo, hi, minimal = args
        calls.append(chunk)
        q, s = generate_puzzle(random.Random(chunk), lo, hi, minimal=False)
        return np.stack([q] * count), np.stack([s] * count)  # every chunk: one puzzle, repeated

    monkeypatch.setattr(sd, "_generate_chunk", repeating_chunk)
    q, s = generate_dataset(3, seed=0, processes=1, progress=False)
    assert len({row.tobytes() for row in q}) == 3
    assert calls == [0, 1, 2]  # first pass: 1 chunk; then one more chunk per missing puzzle
    np.testing.assert_array_equal(q[1], generate_puzzle(random.Random(1), 22, 34, minimal=False)[0])


def test_generate_dataset_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="processes"):
        generate_dataset(2, processes=0, progress=False)
    with pytest.raises(ConfigError, match="n must be"):
        generate_dataset(-1, progress=False)
    assert generate_dataset(0, progress=False)[0].shape == (0, 81)


# ---------------------------------------------------------------------------------------------- cache


def test_cache_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d1 = load_or_generate(tmp_path, n_train=6, n_test=3, seed=1, processes=1, progress=False)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("sudoku-") and files[0].endswith(".npz")  # no temp file left
    assert d1["train_quizzes"].shape == (6, 81) and d1["test_solutions"].shape == (3, 81)
    all_q = np.concatenate([d1["train_quizzes"], d1["test_quizzes"]])
    assert len({row.tobytes() for row in all_q}) == 9  # train and test disjoint

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(sd, "generate_dataset", no_generation)
    d2 = load_or_generate(tmp_path, n_train=6, n_test=3, seed=1, processes=2, progress=False)
    for key in sd._CACHE_KEYS:
        np.testing.assert_array_equal(d1[key], d2[key])
    assert d2["path"] == d1["path"] == tmp_path / files[0]
    monkeypatch.undo()

    # Other parameters, other file; the environment variable sets the default directory.
    monkeypatch.setenv("ENERGYARCH_CACHE", str(tmp_path / "env"))
    d3 = load_or_generate(n_train=2, n_test=1, seed=2, processes=1, progress=False)
    assert d3["path"].parent == tmp_path / "env" and d3["path"].name != files[0]

    # A damaged cache file is reported, naming the file and the fix.
    d1["path"].write_bytes(b"not an npz")
    with pytest.raises(DataError, match=r"sudoku-.*\.npz.*delete the file"):
        load_or_generate(tmp_path, n_train=6, n_test=3, seed=1, processes=1, progress=False)


def test_dataset_from_cache(tmp_path: Path) -> None:
    ds = SudokuDataset.from_cache("test", cache_dir=tmp_path, n_train=2, n_test=2, processes=1, progress=False)
    assert len(ds) == 2
    with pytest.raises(ConfigError, match="split"):
        SudokuDataset.from_cache("val", cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- Palm CSV


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_palm_csv_loads_header_blank_lines_and_dots(tmp_path: Path) -> None:
    q2 = INKALA.replace("0", ".")
    rows = ["quizzes,solutions", f"{WIKI_QUIZ},{WIKI_SOLUTION}", "", f"{q2},{INKALA_SOLUTION}"]
    p = _write(tmp_path / "ok.csv", rows)
    quizzes, solutions = load_palm_csv(p)
    assert quizzes.dtype == solutions.dtype == np.uint8 and quizzes.shape == (2, 81)
    assert quizzes[0].tolist() == digits(WIKI_QUIZ) and quizzes[1].tolist() == digits(INKALA)
    assert solutions[1].tolist() == digits(INKALA_SOLUTION)
    # Without a header, with Windows line endings.
    p2 = tmp_path / "crlf.csv"
    p2.write_bytes(f"{WIKI_QUIZ},{WIKI_SOLUTION}\r\n".encode())
    assert load_palm_csv(p2)[0].shape == (1, 81)


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (f"{WIKI_QUIZ[:-1]},{WIKI_SOLUTION}", "quiz has 80 characters, expected 81"),
        (f"{WIKI_QUIZ},{WIKI_SOLUTION}9", "solution has 82 characters, expected 81"),
        (f"{WIKI_QUIZ[:10]}x{WIKI_QUIZ[11:]},{WIKI_SOLUTION}", "quiz has a non-digit .*cell 11 is 'x'"),
        (f"{WIKI_QUIZ},{WIKI_SOLUTION[:5]}.{WIKI_SOLUTION[6:]}", "solution has a non-digit"),
        (f"{WIKI_QUIZ},0{WIKI_SOLUTION[1:]}", "solution has a 0 at cell 1"),
        (f"6{WIKI_QUIZ[1:]},{WIKI_SOLUTION}", "quiz disagrees with solution at cell 1 .quiz 6, solution 5"),
        (f"{WIKI_QUIZ},{WIKI_SOLUTION},extra", "expected 2 comma-separated fields"),
        (f"{'0' * 81},{'123456789' * 9}", "not a valid Sudoku"),
    ],
)
def test_palm_csv_reports_file_and_line(tmp_path: Path, bad_row: str, message: str) -> None:
    good = f"{WIKI_QUIZ},{WIKI_SOLUTION}"
    # Line 1 header, line 2 good, line 3 blank, line 4 good, line 5 bad, line 6 good.
    p = _write(tmp_path / "bad.csv", ["quizzes,solutions", good, "", good, bad_row, good])
    with pytest.raises(DataError, match=message) as info:
        load_palm_csv(p)
    assert f"{p}, line 5:" in str(info.value)


def test_palm_csv_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_palm_csv(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="no puzzles"):
        load_palm_csv(_write(tmp_path / "empty.csv", ["quizzes,solutions"]))


# ---------------------------------------------------------------------------------------------- dataset, metrics


def test_sudoku_dataset_items() -> None:
    q = np.array([digits(WIKI_QUIZ), digits(INKALA)], dtype=np.uint8)
    s = np.array([digits(WIKI_SOLUTION), digits(INKALA_SOLUTION)], dtype=np.uint8)
    ds = SudokuDataset(q, s)
    assert len(ds) == 2
    quiz, sol = ds[1]
    assert quiz.dtype == sol.dtype == torch.long and quiz.shape == sol.shape == (81,)
    assert quiz.tolist() == digits(INKALA) and int(sol.min()) == 1 and int(sol.max()) == 9
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch[0].shape == (2, 81)
    with pytest.raises(ShapeError, match="quizzes"):
        SudokuDataset(q[:, :80], s[:, :80])
    with pytest.raises(DataError, match="solution values must be 1..9"):
        SudokuDataset(q, q)


def test_sudoku_metrics() -> None:
    s = torch.tensor([digits(WIKI_SOLUTION), digits(INKALA_SOLUTION)])
    q = torch.tensor([digits(WIKI_QUIZ), digits(INKALA)])
    assert sudoku_metrics(s, q, s) == {"board_acc": 1.0, "cell_acc": 1.0}
    pred = s.clone()
    blank0 = int(torch.nonzero(q[0] == 0)[0])
    pred[0, blank0] = pred[0, blank0] % 9 + 1  # one wrong blank on board 0
    given1 = int(torch.nonzero(q[1])[0])
    pred[1, given1] = pred[1, given1] % 9 + 1  # a "wrong" given does not count
    m = sudoku_metrics(pred, q, s)
    n_blank = int((q == 0).sum())
    assert m["board_acc"] == 0.5
    assert m["cell_acc"] == pytest.approx(1 - 1 / n_blank)
    assert sudoku_metrics(pred.numpy(), q.numpy(), s.numpy()) == m
    with pytest.raises(ShapeError, match="argmax"):
        sudoku_metrics(pred[:, :80], q, s)
