"""An energy of any number of terms as data: the ``[[model.terms]]`` tables of a config (docs: Concepts, "Models of
many terms").

Each table names its family and gives that family's keys; strings go through the restricted expression parser,
nothing is evaluated::

    [[model.terms]]
    family = "attention"            # "attention" | "causal" | "feedforward" | "gated"
    f = "-log(x)/beta"
    K = "exp(beta*s)"
    interaction = "query-key"       # "shared" (default) | "query-key" | "diag-low-rank" (with rank = r)

    [[model.terms]]
    family = "feedforward"
    g = "log(x)"
    h = "exp(x)"
    solver = "momentum"             # this term's solver and step rule (default: [model] solver, steps)
    solver_params = { momentum = 0.5 }
    steps = "free"

:func:`declaration_of_term` writes a term back as such a table whenever it can (expressions only), so that a run
trained from Python is written to ``config.toml`` and reloads from it.

>>> tables = normalize_terms([{"family": "attention", "f": "log(x)/beta", "K": "exp(beta*s)",
...                            "interaction": "query-key"}, {"family": "gated", "h": "softplus(x)"}])
>>> E = build_energy(tables, heads=2, ff_ratio=2.0)
>>> [(t.name, t.family) for t in E.terms]
[('attn', 'qk attention'), ('ff', 'gated feedforward')]
>>> declaration_of_term(E["attn"])
{'family': 'attention', 'f': 'log(x)/beta', 'K': 'exp(beta*s)', 'heads': 2, 'interaction': 'query-key'}
>>> build_energy([declaration_of_term(t) for t in E.terms], heads=1, ff_ratio=1.0) == E
True
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, Optional, Sequence, cast

from ..energy import (
    SELF_TERMS,
    Attention,
    CausalAttention,
    Energy,
    FeedForward,
    GatedFeedForward,
    Sphere,
    Term,
    as_energy,
    primitives_of,
)
from ..errors import ConfigError, EnergyArchError
from ..interactions import INTERACTIONS
from ..primitives import Kernel, Scalar, check_params_used, used_params

#: a term's own solver and step rule (``[[model.terms]]`` keys, ``ModelConfig.solvers`` entries)
SOLVER_KEYS = {
    "solver": 'this term\'s update rule, e.g. "momentum" (default: [model] solver)',
    "solver_params": "its hyper-parameters, e.g. { momentum = 0.5 } (default: [model] solver_params, "
    "whose step-rule keys max_step, backtrack, halvings apply to every solver)",
    "steps": 'this term\'s step rule: "descent" | "bounded" | "free" (default: [model] steps)',
}
_COMMON = {
    "name": "term name (default 'attn' or 'ff'; repeated names get _2, _3, ...)",
    "params": "values of extra symbols, e.g. { gamma = 0.5 }",
    **SOLVER_KEYS,
}
_ATTENTION = {
    "f": 'outer function f(x), e.g. "log(x)/beta"',
    "K": 'kernel in s = x.y or r = |x - y|^2, e.g. "exp(beta*s)"',
    "phi": 'optional feature map, e.g. "sigmoid(x)" (inner-product kernels only)',
    "heads": "H (default: [model] heads)",
    "beta": "value of beta (default 1/sqrt(p))",
    "radius": "radius of each head's sphere (default sqrt(p))",
    "interaction": "how queries and keys come from the tokens: "
    + " | ".join(f'"{k}"' for k in INTERACTIONS)
    + ' (default "shared")',
    "rank": 'rank r of the "diag-low-rank" interaction (default 8)',
}
_WIDTH = {
    "ratio": "width M = ratio * d (default: [model] ff_ratio)",
    "width": "width M (instead of ratio)",
    "radius": "radius of the sphere of D^T x (default sqrt(M))",
}

#: ``family = ...`` of a ``[[model.terms]]`` table → (term class, its keys with what each means, required keys)
FAMILIES: dict[str, tuple[type, dict, tuple]] = {
    "attention": (Attention, {**_ATTENTION, **_COMMON}, ("f", "K")),
    "causal": (
        CausalAttention,
        {**_ATTENTION, "self_term": '"exact" (default) | "stopped": x_t\'s key role in its own term', **_COMMON},
        ("f", "K"),
    ),
    "feedforward": (
        FeedForward,
        {"g": 'outer function g(x), e.g. "x"', "h": 'inner function h(x), e.g. "relu(x)**2/2"', **_WIDTH, **_COMMON},
        ("g", "h"),
    ),
    "gated": (
        GatedFeedForward,
        {"h": 'element-wise function h(x), e.g. "softplus(x)" (h\' gates: sigmoid for softplus)', **_WIDTH, **_COMMON},
        ("h",),
    ),
}
_EXPRESSIONS = ("phi", "f", "K", "g", "h")  # phi first: the kernel is built with it
_INTEGERS = ("heads", "width", "rank")


def _words(key: str) -> tuple[str, ...]:
    """The values a word-valued key takes, read from the registry when asked (an interaction registered after this
    module was imported is accepted too)."""
    return tuple(INTERACTIONS) if key == "interaction" else SELF_TERMS


def _interaction_fields(kind: Optional[str] = None) -> set:
    """Keys an interaction takes from a table: the dataclass fields of the registered interaction ``kind`` (of every
    registered one when None), e.g. ``rank`` for ``DiagLowRank``."""
    classes = INTERACTIONS.values() if kind is None else [INTERACTIONS[kind]]
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


def _where(i: int, table: Mapping) -> str:
    return f"[[model.terms]] #{i + 1}" + (f" (family = {table['family']!r})" if "family" in table else "")


def normalize_terms(tables: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Check the keys and value types of every table; returns plain dicts (params sorted, numbers float)."""
    if isinstance(tables, (str, bytes, Mapping)) or not isinstance(tables, Sequence) or not tables:
        raise ConfigError(
            f"[[model.terms]] = {tables!r}: give a non-empty array of tables, each with family = "
            f"{' | '.join(repr(k) for k in FAMILIES)} and that family's keys"
        )
    return [_normalize(i, table) for i, table in enumerate(tables)]


def _normalize(i: int, table: Mapping[str, Any]) -> dict:
    where = _where(i, table if isinstance(table, Mapping) else {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: {table!r} is not a table; write [[model.terms]] with family = ... and its keys")
    family = table.get("family")
    if family not in FAMILIES:
        raise ConfigError(f"{where}: family = {family!r}; choose one of {tuple(FAMILIES)}")
    _, keys, required = FAMILIES[family]
    for key in table:
        if key != "family" and key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = (
                f" (did you mean {close[0]!r}?)"
                if close
                else f" (a value of a symbol? write params = {{ {key} = ... }})"
                if str(key).isidentifier()
                else ""
            )
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: family, " + ", ".join(keys))
    for key in required:
        if key not in table:
            raise ConfigError(f"{where}: missing {key!r} ({keys[key]})")
    out: dict[str, Any] = {"family": family}
    for key in keys:
        if key not in table:
            continue
        value = table[key]
        if key in SOLVER_KEYS:
            out.update(normalize_solver_spec(where, {key: value}))
        elif key in _EXPRESSIONS or key == "name":
            if not isinstance(value, str):
                raise ConfigError(f"{where}: {key} = {value!r} must be a string; {keys[key]}")
            out[key] = value
        elif key in ("interaction", "self_term"):
            if value not in _words(key):
                raise ConfigError(f"{where}: {key} = {value!r}; choose one of {_words(key)}")
            out[key] = value
        elif key == "params":
            if not isinstance(value, Mapping) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
            ):
                raise ConfigError(
                    f"{where}: params = {value!r}: give a table of numbers, e.g. params = {{ gamma = 0.5 }}"
                )
            out[key] = {str(k): float(v) for k, v in sorted(value.items())}
        else:
            integer = key in _INTEGERS
            ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok or not value > 0:
                raise ConfigError(
                    f"{where}: {key} = {value!r} must be a positive {'integer' if integer else 'number'}; {keys[key]}"
                )
            out[key] = value if integer else float(value)
    if "ratio" in out and "width" in out:
        raise ConfigError(f"{where}: gives both ratio and width; keep one")
    for key in _interaction_fields():
        kind = out.get("interaction", "shared")
        if key in out and key not in _interaction_fields(kind):
            takes = [k for k, cls in INTERACTIONS.items() if key in _interaction_fields(k)]
            raise ConfigError(
                f"{where}: {key} = {out[key]} applies to interaction = "
                + " | ".join(f'"{k}"' for k in takes)
                + f" only, not {kind!r}"
            )
    return out


def normalize_solver_spec(where: str, spec: Mapping[str, Any]) -> dict:
    """Check a term's own solver keys (:data:`SOLVER_KEYS`: ``solver``, ``solver_params``, ``steps``); returns a
    plain dict. The hyper-parameters themselves are checked against the solver by ``ModelConfig``.

    >>> normalize_solver_spec("ModelConfig.solvers['attn']", {"solver": "adam", "steps": "free"})
    {'solver': 'adam', 'steps': 'free'}
    """
    from ..solvers import STEP_RULES, solver_names

    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{where} = {spec!r:.80}: give a table with some of the keys {', '.join(SOLVER_KEYS)}, "
            f'e.g. {{ solver = "momentum", steps = "free" }}'
        )
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "solver":
            if value not in solver_names():
                raise ConfigError(f"{where}: solver = {value!r}; choose one of {solver_names()}")
        elif key == "steps":
            if value not in STEP_RULES:
                raise ConfigError(f"{where}: steps = {value!r}; choose one of {STEP_RULES}")
        elif key == "solver_params":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise ConfigError(
                    f"{where}: solver_params = {value!r:.80}: give a table of the solver's "
                    f"hyper-parameters, e.g. solver_params = {{ momentum = 0.5 }}"
                )
            value = dict(value)
            if "steps" in value and "steps" in spec:
                raise ConfigError(
                    f"{where}: gives steps = {spec['steps']!r} and solver_params.steps = "
                    f"{value['steps']!r}; keep one (steps)"
                )
        else:
            close = difflib.get_close_matches(str(key), SOLVER_KEYS, n=1)
            raise ConfigError(
                f"{where}: unknown key {key!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; a term's solver takes {', '.join(SOLVER_KEYS)}"
            )
        out[key] = value
    return out


def solver_spec(table: Mapping[str, Any]) -> dict:
    """The solver keys of a normalised ``[[model.terms]]`` table (empty when it keeps the model's solver)."""
    return {k: table[k] for k in SOLVER_KEYS if k in table}


def size_fields(term) -> dict[str, Any]:
    """The size keys of a term's table: ``heads`` and ``beta`` (attention) or ``width`` / ``ratio``
    (feed-forward), and ``radius`` when the sphere's is not the default."""
    out: dict[str, Any]
    if isinstance(term, Attention):
        out = {"heads": term.heads}
        if term.beta is not None:
            out["beta"] = term.beta
    else:
        out = {"width": term.width} if term.width is not None else {"ratio": term.ratio}
    if term.constraint.radius is not None:
        out["radius"] = float(term.constraint.radius)
    return out


def build_term(table: Mapping[str, Any], heads: int, ff_ratio: float, where: str = "[[model.terms]]"):
    """The term of one normalised table, built with energyarch's public API."""
    cls: Any = FAMILIES[table["family"]][0]  # a term class: its keyword arguments are the family's keys
    params = table.get("params", {})
    texts = {k: table[k] for k in _EXPRESSIONS if k in table}
    key = None
    try:
        prims: dict[str, Any] = {}  # Scalar or Kernel, by role
        for key, text in texts.items():
            own = used_params(text, params)
            prims[key] = (
                Kernel.parse(text, phi=prims.get("phi"), params=own) if key == "K" else Scalar.parse(text, params=own)
            )
        key = None
        check_params_used(params, {k: p.expr for k, p in prims.items()}, "params")
        extra = {"name": table["name"]} if "name" in table else {}
        if issubclass(cls, Attention):
            if "interaction" in table:
                icls = INTERACTIONS[table["interaction"]]
                fields = {f.name for f in dataclasses.fields(icls)}
                extra["interaction"] = icls(**{k: table[k] for k in fields if k in table})
            if "self_term" in table:
                extra["self_term"] = table["self_term"]
            prims.pop("phi", None)
            return cls(
                **prims, heads=table.get("heads", heads), beta=table.get("beta"), radius=table.get("radius"), **extra
            )
        ratio = table.get("ratio", ff_ratio if "width" not in table else 1.0)
        return cls(**prims, width=table.get("width"), ratio=ratio, radius=table.get("radius"), **extra)
    except ConfigError:
        raise
    except EnergyArchError as err:
        at = f" {key} = {table[key]!r}" if key else ""
        raise ConfigError(f"{where}{at}: {err}") from None


def build_energy(tables: Sequence[Mapping[str, Any]], heads: int, ff_ratio: float) -> Energy:
    """The energy of normalised tables: their terms in the declared order (the sequential schedule's order)."""
    return Energy(tuple(build_term(t, heads, ff_ratio, _where(i, t)) for i, t in enumerate(tables)))


def declaration_of_term(term) -> Optional[dict]:
    """The table that rebuilds ``term`` exactly, or None (a torch callable, a non-default RMSNorm epsilon)."""
    family = next((name for name, (cls, _, _) in FAMILIES.items() if type(term) is cls), None)
    if family is None or term.constraint.eps != Sphere().eps:
        return None
    prims = primitives_of(term)
    if any(not p.symbolic or p.expr is None for p in prims.values()):
        return None
    for texts in ({k: p.name for k, p in prims.items()}, {k: str(p.expr) for k, p in prims.items()}):
        table = _table(term, family, prims, texts)  # the declared text; else sympy's printing of it
        if table is not None:
            return table
    return None


def _table(term, family: str, prims: dict, texts: dict) -> Optional[dict]:
    table: dict[str, Any] = {"family": family, **texts}
    params: dict[str, float] = {}
    for p in prims.values():
        params.update(dict(p.params))
    if params:
        table["params"] = {k: float(v) for k, v in sorted(params.items())}
    table.update(size_fields(term))
    if isinstance(term, Attention):
        inter = term.interaction
        if inter is not None and (family == "attention" or inter.kind != "shared"):
            table["interaction"] = inter.kind
            table.update({k: getattr(inter, k) for k in _interaction_fields(inter.kind)})
        if family == "causal" and cast(CausalAttention, term).self_term != "exact":
            table["self_term"] = cast(CausalAttention, term).self_term
    if term.name != ("attn" if isinstance(term, Attention) else "ff"):
        table["name"] = term.name
    try:
        table = _normalize(0, table)
        rebuilt = build_term(table, 1, 1.0)
    except EnergyArchError:
        return None
    return table if _key(rebuilt) == _key(term) else None


def declaration_of_energy(energy: Energy) -> Optional[list[dict]]:
    """The ``[[model.terms]]`` tables of every term, or None when one of them has no declaration."""
    tables = [declaration_of_term(t) for t in energy.terms]
    return None if any(t is None for t in tables) else cast(list[dict], tables)


def _key(term) -> tuple:
    """What identifies a declared term: its type, its fields, its expressions as text (sympy objects compare by
    structure, but a name given to a primitive is only a label)."""

    def plain(value):
        if isinstance(value, (Scalar, Kernel)):
            return (
                type(value).__name__,
                str(value.expr),
                getattr(value, "kind", None),
                value.params,
                plain(getattr(value, "phi", None)),
            )
        return value

    return (
        type(term),
        tuple((f.name, plain(getattr(term, f.name))) for f in dataclasses.fields(term) if f.name not in ("name",)),
        term.name,
    )


# -------------------------------------------------------------------------------------------------------------
# ModelConfig(energy=E) / [[model.terms]]
# -------------------------------------------------------------------------------------------------------------

_TERM_TYPES = (Term,)


class _Shown(str):
    """A description that ``repr`` shows as is (messages write values with ``!r``)."""

    def __repr__(self) -> str:
        return str(self)


def describe(value) -> str:
    """A short description of an energy or a term for messages (never its full repr)."""
    if isinstance(value, Energy):
        return _Shown(f"<an ea.Energy of {len(value)} terms {value.names}>")
    if isinstance(value, _TERM_TYPES):
        return _Shown(f"<an ea.{type(value).__name__} term {value.name!r}>")
    return _Shown(repr(value))


def check_terms(cfg) -> None:
    """Validate ``cfg.terms`` (an Energy, a term, or tables) in place; attention / feedforward must be left at
    their defaults (they are then unused and set to None)."""
    value = cfg.terms
    if cfg.arch != "hyperset":
        raise ConfigError(
            f"ModelConfig.terms: a declared energy is the model of arch='hyperset', not "
            f"arch={cfg.arch!r}; use arch='hyperset' or drop the terms"
        )
    if isinstance(value, (Energy, *_TERM_TYPES)):
        cfg.terms = as_energy(value)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        cfg.terms = normalize_terms(value)
        build_energy(cfg.terms, cfg.heads, cfg.ff_ratio)
    else:
        raise ConfigError(
            f"ModelConfig.terms={describe(value)}: give an ea.Energy (ModelConfig(energy=E)) or a list "
            f"of [[model.terms]] tables, each with family = {' | '.join(repr(k) for k in FAMILIES)}"
        )
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for family in ("attention", "feedforward"):
        if getattr(cfg, family) not in (None, defaults[family]):
            raise ConfigError(
                f"ModelConfig.{family}={describe(getattr(cfg, family))} and terms are both given; the "
                f"terms are the whole energy: put this term among them and drop {family}"
            )
        setattr(cfg, family, None)
    if cfg.norm_gain:
        plain = all(
            type(t) in (Attention, FeedForward) and getattr(t, "interaction", None) is None
            for t in config_energy(cfg).terms
        )
        if not plain:
            raise ConfigError(
                "ModelConfig.norm_gain=True: learnable RMSNorm gains apply to attention terms with the "
                "shared basis and feed-forward terms only; use norm_gain=False"
            )


def declaration_of_terms(value) -> Optional[list[dict]]:
    """``ModelConfig.terms`` as ``[[model.terms]]`` tables (None when a term only Python can build)."""
    if value is None:
        return None
    if isinstance(value, Energy):
        return declaration_of_energy(value)
    return [dict(t) for t in value]


def config_energy(cfg, causal: bool = False) -> Energy:
    """The energy of ``cfg.terms`` with the config's RMSNorm epsilon; with ``causal`` every bidirectional attention
    term becomes its causal conditional form (its own interaction, else the config's; the config's self_term)."""
    energy = cfg.terms if isinstance(cfg.terms, Energy) else build_energy(cfg.terms, cfg.heads, cfg.ff_ratio)
    terms = list(energy.terms)
    if cfg.norm_eps != 1e-6:
        eps = cfg.resolved_eps()
        terms = [dataclasses.replace(t, constraint=Sphere(t.constraint.radius, eps)) for t in terms]
    if causal:
        terms = [_causal(t, cfg) if type(t) is Attention else t for t in terms]
    return Energy(tuple(terms))


def _causal(term: Attention, cfg) -> CausalAttention:
    inter = term.interaction
    if inter is None:
        inter = INTERACTIONS[cfg.interaction](
            **{k: cfg.interaction_rank for k in _interaction_fields(cfg.interaction) if k == "rank"}
        )
    return CausalAttention(
        f=term.f,
        K=term.K,
        heads=term.heads,
        constraint=term.constraint,
        beta=term.beta,
        name=term.name,
        interaction=inter,
        self_term=cfg.self_term,
    )
