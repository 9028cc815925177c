"""A family is one file: a new energy family defined here alone (its term class, its registered family and one
pattern) compiles, verifies against torch.func.grad of its own reference energy, and trains in a model beside the
built-in terms. Nothing in energyarch is edited for it. A second family here brings its own runtime base class, a
runtime helper and its own verification check: the emitted module imports them from this file because the family's
registry entry lists them, and nothing it does not list.

The family is a mean-field clustering energy on per-head coordinates,

    E = (a/2) Σ_h Σ_i ‖z_i^h − μ^h‖²,   μ^h = (1/N) Σ_j z_j^h,

whose gradient is ∇_{z_i} E = a (z_i − μ) (the μ-dependence cancels because Σ_i (z_i − μ) = 0). The reference
energy is written independently, through pairwise distances: Σ_i ‖z_i − μ‖² = (1/2N) Σ_ij ‖z_i − z_j‖².
"""

import math
from dataclasses import dataclass

import pytest
import torch

import energyarch as ea
from energyarch.derivation import Derivation, Dims, Family, Pattern, register_family, register_pattern
from energyarch.emit import check_source
from energyarch.energy import Sphere, Term
from energyarch.errors import CompileError
from energyarch.runtime import TermUpdate
from energyarch.models import ModelConfig
from energyarch.train import TrainConfig, train


@dataclass(frozen=True)
class MeanField(Term):
    """E = (a/2) Σ_h Σ_i ‖z_i^h − μ^h‖² with H heads (a > 0 pulls each head's tokens together)."""

    a: float = 1.0
    heads: int = 1
    constraint: Sphere = Sphere()
    name: str = "cluster"
    family = "mean field"


@register_family
class MeanFieldFamily(Family):
    name = "mean field"
    term_type = MeanField

    def derive(self, term: MeanField, d: int) -> Derivation:
        p = d // term.heads
        dims = Dims(d=d, heads=term.heads, head_dim=p, radius=term.constraint.resolve(p), beta=1 / math.sqrt(p))
        pattern = "mean-field pull" if term.name != "mis_derived" else "mean-field pull, mis-derived"
        return Derivation(term, dims, "symbolic", pattern, "∇_Z E = a (Z − mean_N Z)")

    def energy_lines(self, dv: Derivation) -> list[str]:
        return [f"return {0.5 * dv.term.a!r} * (Z - Z.mean(dim=-2, keepdim=True)).pow(2).sum(dim=(-1, -2, -3))"]

    def reference_energy(self, term: MeanField, Z, env):
        r = (Z.unsqueeze(-2) - Z.unsqueeze(-3)).pow(2).sum(-1)  # (…, H, N, N) ‖z_i − z_j‖²
        return term.a / 2 * r.sum(dim=(-1, -2, -3)) / (2 * Z.shape[-2])


@register_pattern
class MeanFieldPull(Pattern):
    name = "mean-field pull"
    family = "mean field"
    reason = "∇_Z E = a (Z − mean_N Z)"

    def grad_lines(self, dv: Derivation) -> list[str]:
        return [f"return {dv.term.a!r} * (Z - Z.mean(dim=-2, keepdim=True))"]


@register_pattern
class MisDerived(Pattern):
    """The same pull with the mean left out: verify must catch it."""

    name = "mean-field pull, mis-derived"
    family = "mean field"

    def grad_lines(self, dv: Derivation) -> list[str]:
        return [f"return {dv.term.a!r} * Z"]


def test_a_family_defined_in_this_file_compiles_and_verifies():
    step = ea.compile(MeanField(a=0.5, heads=2), d=8, dtype=torch.float64)
    assert step.derivations["cluster"].pattern == "mean-field pull"
    assert "class ClusterMeanFieldPullUpdate(TermUpdate)" in step.source
    report = ea.verify(step)
    assert report.ok and report.terms[0].grad_rel_diff < 1e-12, str(report)
    generic = ea.compile(MeanField(a=0.5, heads=2), d=8, dtype=torch.float64, path="autodiff")
    assert ea.verify(generic).ok  # the generic path: torch.func.grad of the emitted energy
    wrong = ea.compile(MeanField(a=0.5, heads=2, name="mis_derived"), d=8, dtype=torch.float64)
    assert not ea.verify(wrong, raise_on_fail=False).ok


def test_a_family_defined_in_this_file_trains_beside_the_built_in_terms(tmp_path):
    energy = (
        ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2)
        + MeanField(a=0.1, heads=2)
        + ea.FeedForward(g="x", h="relu(x)**2/2", ratio=2)
    )
    cfg = TrainConfig(
        task="digits",
        epochs=1,
        batch_size=16,
        limit_train=32,
        limit_test=16,
        progress=False,
        diagnostics_samples=4,
        eval_iters=[1, 2],
        out_dir=str(tmp_path / "run"),
        model=ModelConfig(d=16, heads=2, iters=2, time_freq=8, energy=energy),
    )
    summary = train(cfg)
    assert summary["finished"] and math.isfinite(summary["final"]["test_loss"])
    model, _, _, _ = energyarch_load(tmp_path / "run", energy)
    assert model.backbone.layers[0].step.names == ["attn", "cluster", "ff"]


def energyarch_load(path, energy):
    """The run records the energy's fingerprint (the family has no [[model.terms]] table): hand it back."""
    return ea.train.load_run(path, energy=energy)


# ------------------------------------------------------------------------------------------------------------
# a family with its own runtime: base class, helper and verification check, all in this file
# ------------------------------------------------------------------------------------------------------------


class PullUpdate(TermUpdate):
    """This file's runtime base class: a TermUpdate that counts its steps."""

    directions_taken = 0

    def direction(self, X, weight=None):
        PullUpdate.directions_taken += 1
        return super().direction(X, weight)


def centred(Z):
    """This file's runtime helper: each head's coordinates minus their mean over the tokens."""
    return Z - Z.mean(dim=-2, keepdim=True)


class NotAnUpdate:
    """Not a TermUpdate: a family may not name it as its runtime base."""


@dataclass(frozen=True)
class Centred(Term):
    """The mean-field energy again, E = (a/2) Σ_h Σ_i ‖z_i^h − μ^h‖², on this file's runtime."""

    a: float = 1.0
    heads: int = 1
    constraint: Sphere = Sphere()
    name: str = "centred"
    family = "centred pull"


CHECKED: list[str] = []


@register_family
class CentredFamily(MeanFieldFamily):
    name = "centred pull"
    term_type = Centred
    runtime_base = (__name__, "PullUpdate")
    runtime_names = {__name__: ("centred",)}

    def derive(self, term: Centred, d: int) -> Derivation:
        dv = super().derive(term, d)
        return Derivation(term, dv.dims, "symbolic", "centred pull", "∇_Z E = a centred(Z)")

    def energy_lines(self, dv: Derivation) -> list[str]:
        return [f"return {0.5 * dv.term.a!r} * centred(Z).pow(2).sum(dim=(-1, -2, -3))"]

    def check(self, term, module, reference, X, dv, step_size):
        CHECKED.append(type(module).__mro__[1].__name__)  # verify asked this family
        return super().check(term, module, reference, X, dv, step_size)


@register_pattern
class CentredPull(Pattern):
    name = "centred pull"
    family = "centred pull"
    reason = "∇_Z E = a centred(Z)"

    def grad_lines(self, dv: Derivation) -> list[str]:
        return [f"return {dv.term.a!r} * centred(Z)"]


def test_a_family_with_its_own_runtime_base_class_and_check():
    step = ea.compile(Centred(a=0.5, heads=2), d=8, dtype=torch.float64)
    module = step.terms["centred"]
    assert isinstance(module, PullUpdate)
    assert f"from {__name__} import PullUpdate, centred\n" in step.source
    CHECKED.clear()
    report = ea.verify(step)
    assert report.ok and report.terms[0].grad_rel_diff < 1e-12 and CHECKED == ["PullUpdate"], str(report)
    before = PullUpdate.directions_taken
    module(torch.randn(2, 5, 8, dtype=torch.float64), 0.1)
    assert PullUpdate.directions_taken == before + 1


def test_an_emitted_module_imports_only_what_its_family_lists():
    source = ea.compile(Centred(a=0.5, heads=2), d=8).source
    check_source(source)
    other = ea.compile(MeanField(a=0.5, heads=2), d=8).source
    for tampered in (
        source.replace("PullUpdate, centred", "PullUpdate, centred, CHECKED"),  # not listed
        source.replace(f"from {__name__} import", "from os import"),  # another module
        source.replace("(PullUpdate)", "(TermUpdate)"),  # another base
        other.replace(
            "from energyarch.runtime import TermUpdate",  # another family's name
            f"from energyarch.runtime import TermUpdate\nfrom {__name__} import centred",
        ),
    ):
        assert tampered != source
        with pytest.raises(CompileError, match="structural check"):
            check_source(tampered)


@pytest.mark.parametrize(
    "base, names, match",
    [
        ((__name__, "PullUpdate"), {"os; import sys": ("x",)}, "not a dotted module path"),
        ((__name__, "PullUpdate"), {__name__: ("__import__",)}, "not an identifier the template may import"),
        ((__name__, "PullUpdate"), {__name__: ("torch",)}, "not an identifier the template may import"),
        ((__name__, "PullUpdate"), {__name__: "centred"}, "tuple of strings"),
        ((__name__,), {}, "not a \\(module, class name\\) pair"),
        (("energyarch.runtime", "self"), {}, "not an identifier the template may import"),
    ],
)
def test_a_family_whose_runtime_names_are_not_plain_names_is_refused(base, names, match):
    class Bad(CentredFamily):
        name = "bad runtime names"
        runtime_base = base
        runtime_names = names

    with pytest.raises(CompileError, match=match):
        register_family(Bad)


def test_a_runtime_base_that_is_not_a_term_update_is_refused():
    @dataclass(frozen=True)
    class Odd(Centred):
        name: str = "odd"
        family = "odd base"

    @register_family
    class OddFamily(CentredFamily):
        name = "odd base"
        term_type = Odd
        runtime_base = (__name__, "NotAnUpdate")

        def derive(self, term, d):
            return Derivation(term, super().derive(term, d).dims, "autodiff", "autodiff", "generic")

    with pytest.raises(CompileError, match="not a TermUpdate"):
        ea.compile(Odd(), d=8)
