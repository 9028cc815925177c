"""Diagnostics (Eqs. 17-18) against hand computations."""

import math

import pytest
import torch

from energyarch.models import average_angle, effective_rank


def test_effective_rank_of_identity_is_n():
    for n in (1, 3, 7):
        assert effective_rank(torch.eye(n)).item() == pytest.approx(n, rel=1e-12)


def test_effective_rank_rank_one_and_hand_value():
    v = torch.tensor([[1.0, 2.0, 3.0]])
    assert effective_rank(v.T @ v).item() == pytest.approx(1.0, abs=1e-6)
    # singular values (3, 1): p = (3/4, 1/4)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    Z = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    assert effective_rank(Z).item() == pytest.approx(expected, rel=1e-12)


def test_effective_rank_is_invariant_to_rotation_and_batched():
    Q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    Z = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64))
    batch = torch.stack([Z, Z @ Q, Q @ Z])
    out = effective_rank(batch)
    assert out.shape == (3,)
    torch.testing.assert_close(out, out[:1].expand(3))


def test_average_angle_hand_values():
    assert average_angle(torch.eye(3)).item() == pytest.approx(90.0)
    assert average_angle(torch.tensor([[1.0, 0.0], [2.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-3)
    sixty = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    assert average_angle(sixty).item() == pytest.approx(60.0, rel=1e-10)
    assert average_angle(sixty, degrees=False).item() == pytest.approx(math.pi / 3, rel=1e-10)
    # three vectors: cosines 0 (e1,e2), 1/√2 (e1,(1,1)), 1/√2 (e2,(1,1)) → mean √2/3; scale does not matter
    Z = torch.tensor([[1.0, 0.0], [0.0, 5.0], [2.0, 2.0]], dtype=torch.float64)
    expected = math.degrees(math.acos(math.sqrt(2) / 3))
    assert average_angle(Z).item() == pytest.approx(expected, rel=1e-10)


def test_average_angle_needs_two_vectors():
    with pytest.raises(ValueError, match="at least 2"):
        average_angle(torch.ones(1, 3))
