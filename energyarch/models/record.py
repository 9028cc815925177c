"""The energy of a run as the run records it: names, ``[model.attention]`` / ``[model.feedforward]`` tables,
``[[model.terms]]`` tables, or, for an energy with torch callables, a fingerprint that ``load_run(path, energy=E)``
checks the handed-back energy against.

>>> from energyarch.models import ModelConfig
>>> import energyarch as ea
>>> energy_fields(ModelConfig(d=16, heads=2))[0]
{'attention': 'bisoftmax', 'feedforward': 'relu'}
>>> cfg = ModelConfig(d=16, heads=2, feedforward=ea.GatedFeedForward(h="softplus(x)"))
>>> [t["family"] for t in energy_fields(cfg)[0]["terms"]]
['attention', 'gated']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Callable, Optional, cast

import torch

from ..energy import Attention, Energy
from ..primitives import Kernel, Scalar
from .terms import declaration_of_energy, declaration_of_term


def energy_fields(cfg) -> tuple[dict, Optional[str]]:
    """The energy of ``cfg`` as config data and, when it cannot be written, why.

    Returns ``({'attention': ..., 'feedforward': ...}, None)`` when both terms have a ``[model.attention]`` /
    ``[model.feedforward]`` declaration, ``({'terms': [tables]}, None)`` when every term has a ``[[model.terms]]``
    table (causal and gated terms, interactions, names), else ``({'terms': {'python_energy': fingerprint,
    'names': [...]}}, reason)``: a torch callable can only be handed back from Python
    (``load_run(path, energy=E)``), and the fingerprint refuses another energy.
    """
    if cfg.terms is None:
        a, f = cfg.declaration("attention"), cfg.declaration("feedforward")
        if a is not None and f is not None:
            return {"attention": a, "feedforward": f}, None
        energy = Energy((cfg.term("attention"), cfg.term("feedforward")))
    elif isinstance(cfg.terms, Energy):
        energy = cfg.terms
    else:
        return {"terms": [dict(t) for t in cfg.terms]}, None
    tables = declaration_of_energy(energy)
    if tables is not None:
        return {"terms": tables}, None
    return {"terms": {"python_energy": energy_fingerprint(energy, cfg.d), "names": energy.names}}, _why(energy)


def _why(energy: Energy) -> str:
    for t in energy.terms:
        if declaration_of_term(t) is None:
            opaque = [
                f"{k} = {getattr(t, k).name}"
                for k in ("f", "K", "g", "h")
                if hasattr(t, k) and not getattr(t, k).symbolic
            ]
            if isinstance(t, Attention) and t.K.phi is not None and not t.K.phi.symbolic:
                opaque.append(f"phi = {t.K.phi.name}")
            what = (
                f"{', '.join(opaque)} {'is a torch callable' if len(opaque) == 1 else 'are torch callables'}"
                if opaque
                else f"its sphere has RMSNorm eps = {t.constraint.eps:g} (not the default)"
            )
            return f"term {t.name!r} (ea.{type(t).__name__}): {what}"
    return "a term has no declaration"  # pragma: no cover - energy_fields calls this only when one has none


def energy_fingerprint(energy: Energy, d: int) -> str:
    """16 hex digits of sha256 over what defines ``energy`` at width ``d``: each term's type, its fields and
    expressions, and each torch callable's values at fixed probe points (float64, 10 significant digits).

    >>> E = Attention(f="log(x)", K=lambda x, y: (x * y).sum().exp(), heads=2)
    >>> energy_fingerprint(Energy((E,)), 8) == energy_fingerprint(Energy((E,)), 8)
    True
    >>> energy_fingerprint(Energy((E,)), 8) == energy_fingerprint(Energy((E.renamed("other"),)), 8)
    False
    """

    def probe(value, term):
        if isinstance(value, Scalar):
            if value.expr is not None:
                return ["expr", str(value.expr), list(value.params)]
            with torch.no_grad():
                out = cast(Callable, value.fn)(torch.linspace(-2, 2, 9, dtype=torch.float64))  # no expr: a callable
            return ["fn", value.name, _rounded(out)]
        if isinstance(value, Kernel):
            if value.kind != "callable":
                return ["expr", value.kind, str(value.expr), list(value.params), probe(value.phi, term)]
            inter = getattr(term, "interaction", None)
            p = inter.coord_dim(d, term.heads) if inter is not None else d // term.heads
            g = torch.Generator().manual_seed(0)
            x, y = torch.randn(2, 3, p, generator=g, dtype=torch.float64)
            with torch.no_grad():
                fn = cast(Callable, value.fn)  # a callable kernel
                out = torch.stack([fn(a, b) for a, b in zip(x, y)])
            return ["fn", value.name, value.symmetric, _rounded(out)]
        return repr(value)

    rows = []
    for term in energy.terms:
        try:
            rows.append(
                [type(term).__name__, *[[f.name, probe(getattr(term, f.name), term)] for f in dataclasses.fields(term)]]
            )
        except Exception as err:  # noqa: BLE001 - a callable that fails on the probe: its identity is its text
            rows.append([type(term).__name__, term.name, f"probe failed: {type(err).__name__}"])
    return hashlib.sha256(json.dumps(rows, default=repr).encode()).hexdigest()[:16]


def _rounded(t) -> list:
    return [float(f"{float(v):.10g}") for v in t.flatten()]
