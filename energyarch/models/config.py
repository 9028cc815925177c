"""Model and task configuration: one dataclass each, one comment per field, validated at construction.

>>> cfg = ModelConfig(arch="hyperset", d=64, heads=4, layers=1, iters=8)
>>> cfg.energy().names
['attn', 'ff']

An energy term is named (a preset or a catalog entry of the right family) or declared inline as data; strings
go through the restricted expression parser, nothing is evaluated:

>>> cfg = ModelConfig(d=16, heads=2, attention={"f": "log(x)", "K": "exp(-gamma*r)", "params": {"gamma": 0.5}},
...                   feedforward="softplus-ff")
>>> cfg.energy()["attn"].K.kind, cfg.energy()["ff"].resolve_width(16)
('distance', 64)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NoReturn, Optional, Sequence, Union, cast

from ..compile import SCHEDULES
from ..energy import SELF_TERMS, Attention, Energy, FeedForward, GatedFeedForward, Sphere, Term, params_of
from ..errors import ConfigError, EnergyArchError
from ..interactions import INTERACTIONS
from ..primitives import Kernel, Scalar, check_params_used, used_params
from ..runtime import MODES
from .terms import (
    check_terms,
    config_energy,
    declaration_of_terms,
    describe,
    normalize_solver_spec,
    size_fields,
    solver_spec,
)

#: the largest step size α = max_step · sigmoid(raw) of ModelConfig's default rule, steps = 'descent'
DESCENT_MAX_STEP = 1.0
ARCHS = ("hyperset", "transformer", "energy_transformer", "crate")
TIME_EMBEDDINGS = ("energyarch", "official")

#: Paper operators (Tables 19-20) as declarations; heads / ratio are filled in from the config.
ATTENTION_PRESETS = {
    "bisoftmax": lambda heads: Attention(f="log(x)/beta", K="exp(beta*s)", heads=heads),
    "sigmoid": lambda heads: Attention(f="x/(2*beta)", K="sigmoid(beta*s)", heads=heads),
    "linear": lambda heads: Attention(f="x/(2*beta)", K="(beta*s)**2/2", phi="sigmoid(x)", heads=heads),
}
FEEDFORWARD_PRESETS = {
    "relu": lambda ratio: FeedForward(g="x", h="relu(x)**2/2", ratio=ratio),
    "softmax": lambda ratio: FeedForward(g="log(x)", h="exp(x)", ratio=ratio),
    "gated": lambda ratio: FeedForward(g="x**2/2", h="sigmoid(x)", ratio=ratio),
    # CEM's gated feed-forward with shared up/down projections: −∇E = D(σ(DᵀX) ⊙ Vᵀx̄) (a sigmoid GLU)
    "gated-cem": lambda ratio: GatedFeedForward(h="softplus(x)", ratio=ratio),
}

#: Keys of an inline declaration (``[model.attention]`` / ``[model.feedforward]``), with what each means.
DECLARATION_KEYS = {
    "attention": {
        "f": 'outer function f(x), e.g. "log(x)/beta"',
        "K": 'kernel in s = x.y or r = |x - y|^2, e.g. "exp(beta*s)"',
        "phi": 'optional feature map, e.g. "sigmoid(x)" (inner-product kernels only)',
        "params": "values of extra symbols, e.g. { gamma = 0.5 }",
        "heads": "H; must equal [model] heads (default: [model] heads)",
        "beta": "value of beta (default 1/sqrt(p))",
        "radius": "radius of each head's sphere (default sqrt(p))",
    },
    "feedforward": {
        "g": 'outer function g(x), e.g. "x"',
        "h": 'inner function h(x), e.g. "relu(x)**2/2"',
        "ratio": "width M = ratio * d (default: [model] ff_ratio)",
        "width": "width M (instead of ratio)",
        "params": "values of extra symbols, e.g. { a = 2.0 }",
        "radius": "radius of the sphere of D^T x (default sqrt(M))",
    },
}
_REQUIRED = {"attention": ("f", "K"), "feedforward": ("g", "h")}
_PRESETS: dict[str, Mapping[str, Callable[[Any], Term]]] = {
    "attention": ATTENTION_PRESETS,
    "feedforward": FEEDFORWARD_PRESETS,
}


def _fail(name: str, value, fix: str) -> NoReturn:
    raise ConfigError(f"ModelConfig.{name}={value!r}: {fix}")


def _pos_int(name: str, value, zero_ok: bool = False) -> None:
    lo = 0 if zero_ok else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        _fail(name, value, f"must be an integer >= {lo}")


def _pos_num(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (value > 0 and math.isfinite(value)):
        _fail(name, value, "must be a finite positive number")


def _choice(owner: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{owner}.{name}={value!r}: choose one of {tuple(choices)}")


# -------------------------------------------------------------------------------------------------------------
# energy terms by name (preset or catalog entry) or inline declaration
# -------------------------------------------------------------------------------------------------------------


def catalog_names(family: str) -> list[str]:
    """Names of the catalog entries of ``family`` ('attention' | 'feedforward'), in table order."""
    from .. import catalog

    return [name for name, entry in catalog.load_catalog().items() if entry.family == family]


def _named_term(family: str, name: str, cfg: "ModelConfig"):
    """A preset or a catalog entry of ``family``; heads / width come from the config, the radius rule from the
    entry (evaluated at this config's p or M)."""
    if name in _PRESETS[family]:
        return _PRESETS[family][name](cfg.heads if family == "attention" else cfg.ff_ratio)
    from .. import catalog

    entries = catalog.load_catalog()
    entry = entries.get(name)
    if entry is None or entry.family != family:
        known = tuple(_PRESETS[family]) + tuple(catalog_names(family))
        why = f"is a {entry.family} entry" if entry is not None else "is neither a preset nor a catalog entry"
        _fail(family, name, f"{why}; choose one of {known}, or declare the term inline in a [model.{family}] table")
    base: Any = entry.term(cfg.d)  # an Attention or a FeedForward, by family
    if family == "attention":
        return Attention(f=base.f, K=base.K, heads=cfg.heads, constraint=Sphere(entry.radius(cfg.head_dim)))
    width = max(1, int(round(cfg.ff_ratio * cfg.d)))
    return FeedForward(g=base.g, h=base.h, ratio=cfg.ff_ratio, constraint=Sphere(entry.radius(width)))


def _number(family: str, key: str, value, integer: bool = False):
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value > 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"[model.{family}] {key} = {value!r}: must be {kind}; {DECLARATION_KEYS[family][key]}")
    return value if integer else float(value)


def normalize_declaration(family: str, table: Mapping[str, Any]) -> dict:
    """Check an inline declaration's keys and value types; returns a plain dict (params sorted, numbers float).

    >>> normalize_declaration("feedforward", {"g": "x", "h": "softplus(x)", "ratio": 2})
    {'g': 'x', 'h': 'softplus(x)', 'ratio': 2.0}
    """
    keys = DECLARATION_KEYS[family]
    for key in table:
        if key not in keys:
            import difflib

            close = difflib.get_close_matches(str(key), keys, n=1)
            other = "feedforward" if family == "attention" else "attention"
            hint = (
                f" (did you mean {close[0]!r}?)"
                if close
                else f" (it belongs to [model.{other}])"
                if key in DECLARATION_KEYS[other]
                else f" (a value of a symbol? write params = {{ {key} = ... }})"
                if str(key).isidentifier()
                else ""
            )
            raise ConfigError(
                f"[model.{family}] unknown key {key!r}{hint}; valid keys: "
                + "; ".join(f"{k}: {v}" for k, v in keys.items())
            )
    for key in _REQUIRED[family]:
        if key not in table:
            raise ConfigError(
                f"[model.{family}] is missing {key!r} ({keys[key]}); write e.g. {key} = {keys[key].split('e.g. ')[-1]}"
            )
    out: dict[str, Any] = {}
    for key in keys:
        if key not in table:
            continue
        value = table[key]
        if key in ("f", "K", "phi", "g", "h"):
            if not isinstance(value, str):
                raise ConfigError(f"[model.{family}] {key} = {value!r}: must be an expression string; {keys[key]}")
            out[key] = value
        elif key == "params":
            if not isinstance(value, Mapping) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
            ):
                raise ConfigError(
                    f"[model.{family}] params = {value!r}: give a table of numbers, e.g. params = {{ gamma = 0.5 }}"
                )
            out[key] = {str(k): float(v) for k, v in sorted(value.items())}
        else:
            out[key] = _number(family, key, value, integer=key in ("heads", "width"))
    if "ratio" in out and "width" in out:
        raise ConfigError(f"[model.{family}] gives both ratio = {out['ratio']} and width = {out['width']}; keep one")
    return out


def _declared_term(family: str, table: Mapping[str, Any], cfg: Union["ModelConfig", "_Shape"]):
    """Build the term of an inline declaration (already normalised) with energyarch's public API."""
    params = table.get("params", {})
    key = None
    try:
        if family == "attention":
            heads = table.get("heads", cfg.heads)
            if heads != cfg.heads:
                raise ConfigError(
                    f"[model.attention] heads = {heads} but [model] heads = {cfg.heads}; make them "
                    f"equal or drop heads from [model.attention]"
                )
            key = "phi"
            phi = Scalar.parse(table["phi"], params=used_params(table["phi"], params)) if "phi" in table else None
            key = "f"
            f = Scalar.parse(table["f"], params=used_params(table["f"], params))
            key = "K"
            K = Kernel.parse(table["K"], phi=phi, params=used_params(table["K"], params))
            key = None
            check_params_used(params, {"f": f.expr, "K": K.expr, "phi": phi and phi.expr}, "params")
            return Attention(f=f, K=K, heads=heads, beta=table.get("beta"), radius=table.get("radius"))
        key = "g"
        g = Scalar.parse(table["g"], params=used_params(table["g"], params))
        key = "h"
        h = Scalar.parse(table["h"], params=used_params(table["h"], params))
        key = None
        check_params_used(params, {"g": g.expr, "h": h.expr}, "params")
        ratio = table.get("ratio", cfg.ff_ratio if "width" not in table else 1.0)
        return FeedForward(g=g, h=h, width=table.get("width"), ratio=ratio, radius=table.get("radius"))
    except ConfigError:
        raise
    except EnergyArchError as err:
        where = f"[model.{family}] {key} = {table[key]!r}" if key else f"[model.{family}]"
        raise ConfigError(f"{where}: {err}") from None


def declaration_of(term) -> Optional[dict]:
    """The inline declaration (plain data) that rebuilds ``term`` exactly, or None (torch callables, renamed or
    non-default constraint epsilon, a causal term: a causal task makes its attention causal itself)."""
    family = term.family
    if family not in ("attention", "feedforward"):
        return None
    prims = {"f": term.f, "K": term.K, "phi": term.K.phi} if family == "attention" else {"g": term.g, "h": term.h}
    if (
        any(p is not None and not p.symbolic for p in prims.values())
        or term.name != ("attn" if family == "attention" else "ff")
        or term.constraint.eps != Sphere().eps
    ):
        return None
    table: dict[str, Any] = {k: p.name for k, p in prims.items() if p is not None}
    params = dict(params_of(term))
    if params:
        table["params"] = {k: float(v) for k, v in sorted(params.items())}
    table.update(size_fields(term))
    try:
        table = normalize_declaration(family, table)
        rebuilt = _declared_term(
            family,
            table,
            _Shape(term.heads if family == "attention" else 1, term.ratio if family == "feedforward" else 1.0),
        )
    except EnergyArchError:
        return None
    return table if _term_key(rebuilt) == _term_key(term) else None


@dataclass
class _Shape:
    """The two ModelConfig fields an inline declaration reads (for :func:`declaration_of`)."""

    heads: int
    ff_ratio: float


def _term_key(term) -> tuple:
    prims = (term.f, term.K, term.K.phi) if term.family == "attention" else (term.g, term.h)
    exprs = tuple(None if p is None else (str(p.expr), getattr(p, "kind", None)) for p in prims)
    shape = (term.heads, term.beta) if term.family == "attention" else (term.width, term.ratio)
    return (term.family, exprs, tuple(sorted(params_of(term).items())), shape, term.constraint)


def _with_eps(term, eps: float):
    """``term`` with its sphere's RMSNorm epsilon set to ``eps`` (same radius)."""
    return dataclasses.replace(term, constraint=Sphere(term.constraint.radius, eps))


@dataclass
class ModelConfig:
    """Architecture of a model (backbone only; the task decides embedding and readout)."""

    arch: str = "hyperset"  # 'hyperset' | 'transformer' | 'energy_transformer' | 'crate'
    d: int = 128  # token width
    heads: int = 4  # attention heads H (head width p = d / H)
    layers: int = 1  # L distinct layers (own weights), applied one after the other
    iters: int = 16  # T: iterations of each layer at training (shared weights); evaluation may use more
    attention: Union[str, Mapping, Attention] = "bisoftmax"  # hyperset: preset (bisoftmax|sigmoid|linear), catalog
    #   entry name (e.g. 'tanh-kernel'), inline declaration {f, K, phi, params, heads, beta, radius} or ea.Attention
    feedforward: Union[str, Mapping, FeedForward] = "relu"  # hyperset: preset (relu|softmax|gated), catalog entry
    #   name (e.g. 'softplus-ff'), inline declaration {g, h, ratio | width, params, radius} or ea.FeedForward
    ff_ratio: float = 4.0  # hyperset / energy_transformer: feed-forward width M = ff_ratio * d (unless declared)
    step_sizes: str = "learned"  # hyperset: 'learned' (alpha_t, gamma_t from a network, App. D.1) | 'fixed'
    fixed_step: float = 0.1  # step size when step_sizes='fixed'; also the Energy Transformer's step
    condition: str = "x0"  # step-size network conditioned on the layer's input 'x0' or the current tokens 'xt'
    time_freq: int = 512  # width of the sinusoidal embedding of the iteration index t (Table 6)
    lora_rank: int = 0  # hyperset: rank r of depth-wise LoRA (App. G.2); 0 = off
    lora_scale: float = 4.0  # s in W_t = W + s * A_t B_t
    mode: str = "paper"  # hyperset constraint semantics: 'paper' | 'exact' | 'riemannian' (see ea.compile)
    steps: str = "descent"  # hyperset step-size rule: 'descent' (positive, backtracked: no sub-step raises its
    #   term's energy) | 'bounded' | 'free' (the paper's signed steps); solver_params.steps, if given, wins
    solver: str = "gd"  # hyperset update rule: 'gd' | 'momentum' | 'nesterov' | 'rmsprop' | 'adam' (energyarch.solvers)
    solver_params: dict = dataclasses.field(default_factory=dict)  # its hyper-parameters, e.g. { momentum = 0.9 },
    #   { beta1 = 0.9, beta2 = 0.96 }, { max_step = 1.0 } (the largest step under 'descent' and 'bounded')
    solvers: dict = dataclasses.field(default_factory=dict)  # hyperset: a solver and step rule per term, for the
    #   terms it names (the three fields above are the default): { attn = { solver = "momentum", solver_params =
    #   { momentum = 0.5 }, steps = "free" } }; [[model.terms]] tables take the same keys
    # --- the official Hyper-SET code's conventions (off by default; docs/training.md "Official conventions") ---
    norm_gain: bool = False  # hyperset: learnable RMSNorm gain per term, Z = g ⊙ RMSNorm(X W_h) (paper mode only)
    norm_eps: Union[float, str] = 1e-6  # hyperset: RMSNorm epsilon; 'machine' = torch.finfo(dtype).eps (official)
    time_embedding: str = "energyarch"  # step sizes: 'energyarch' ([cos, sin], t from 0) | 'official' ([sin, cos],
    #   frequencies 10^(-4k/(half-1)), t from 1)
    # --- causal tasks (language modelling): the conditional energy's interaction and self-term (CEM) ---------
    interaction: str = "shared"  # 'shared' (Hyper-SET: Q = K = V = W_h) | 'query-key' (CEM's tied W_Q, W_K) |
    #   'diag-low-rank' (diag(δ) + W_Q W_Kᵀ, rank interaction_rank)
    interaction_rank: int = 8  # rank r of the 'diag-low-rank' interaction
    self_term: str = "exact"  # 'exact': differentiate x_t's key role in its own term | 'stopped': hold it fixed
    # --- a model of any number of terms (models/terms.py): replaces attention / feedforward when given ----------
    terms: Any = None  # the whole energy: [[model.terms]] tables ({family, name, ...}) or an ea.Energy (Python:
    #   ModelConfig(energy=E)); each term gets its own basis, step size, LoRA and solver state, in declared order
    schedule: str = "sequential"  # hyperset: 'sequential' (one step per term in declared order, the paper's
    #   splitting) | 'joint' (one step on the sum of the terms, every direction at the same point)

    def __post_init__(self):
        _choice("ModelConfig", "arch", self.arch, ARCHS)
        for name in ("d", "heads", "layers", "iters", "time_freq"):
            _pos_int(name, getattr(self, name))
        _pos_int("lora_rank", self.lora_rank, zero_ok=True)
        for name in ("ff_ratio", "fixed_step", "lora_scale"):
            _pos_num(name, getattr(self, name))
        if self.d % self.heads:
            _fail("heads", self.heads, f"must divide d={self.d} (head width p = d / heads); e.g. heads=4 with d=128")
        if self.time_freq % 2:
            _fail("time_freq", self.time_freq, "must be even (half sine, half cosine); e.g. 512")
        if self.lora_rank and self.arch != "hyperset":
            _fail(
                "lora_rank",
                self.lora_rank,
                f"depth-wise LoRA applies to arch='hyperset' only, not arch={self.arch!r}; use lora_rank=0",
            )
        _choice("ModelConfig", "step_sizes", self.step_sizes, ("learned", "fixed"))
        _choice("ModelConfig", "condition", self.condition, ("x0", "xt"))
        _choice("ModelConfig", "mode", self.mode, MODES)
        _choice("ModelConfig", "interaction", self.interaction, tuple(INTERACTIONS))
        _choice("ModelConfig", "self_term", self.self_term, SELF_TERMS)
        _choice("ModelConfig", "schedule", self.schedule, SCHEDULES)
        _pos_int("interaction_rank", self.interaction_rank)
        self._check_solver()
        _choice("ModelConfig", "time_embedding", self.time_embedding, TIME_EMBEDDINGS)
        if self.time_embedding == "official" and self.time_freq < 4:
            _fail(
                "time_freq",
                self.time_freq,
                "the official time embedding needs time_freq >= 4 (frequencies 10^(-4k/(half-1))); e.g. 512",
            )
        if not isinstance(self.norm_gain, bool):
            _fail("norm_gain", self.norm_gain, "must be true or false")
        if self.norm_gain and self.mode != "paper":
            _fail(
                "norm_gain",
                self.norm_gain,
                f"learnable RMSNorm gains are defined for mode='paper' (the official "
                f"code's), not mode={self.mode!r}; use mode='paper' or norm_gain=False",
            )
        if self.norm_eps != "machine" and (
            isinstance(self.norm_eps, bool)
            or not isinstance(self.norm_eps, (int, float))
            or not (math.isfinite(self.norm_eps) and self.norm_eps >= 0)
        ):
            _fail(
                "norm_eps",
                self.norm_eps,
                "give a number >= 0 (default 1e-6) or 'machine' (the dtype's machine "
                "epsilon, as the official code's nn.RMSNorm)",
            )
        if self.terms is not None:
            self._check_terms()
        else:
            for family in ("attention", "feedforward"):
                self._check_term(family)
        self._check_term_solvers()
        if (
            self.norm_gain
            and self.arch == "hyperset"
            and any(isinstance(t, Attention) and t.K.kind == "distance" for t in self.energy().terms)
        ):
            _fail(
                "norm_gain",
                self.norm_gain,
                "a distance kernel's energy is evaluated with r = 2R² − 2s, which holds "
                "on the sphere only, and gains move Z off it; use an inner-product "
                "kernel (in s) or norm_gain=False",
            )

    def _check_solver(self) -> None:
        from ..solvers import STEP_RULES, solver_names

        _choice("ModelConfig", "solver", self.solver, solver_names())
        _choice("ModelConfig", "steps", self.steps, STEP_RULES)
        if not isinstance(self.solver_params, Mapping):
            _fail(
                "solver_params",
                self.solver_params,
                "give a table of the solver's hyper-parameters, e.g. { momentum = 0.9 }",
            )
        self.solver_params = dict(self.solver_params)
        if (self.solver != "gd" or self.solver_params) and self.arch != "hyperset":
            _fail(
                "solver",
                self.solver,
                f"solvers apply to arch='hyperset' only, not arch={self.arch!r}; use solver='gd' without solver_params",
            )
        try:
            self.solver_object()
        except EnergyArchError as err:
            _fail("solver_params", self.solver_params, str(err))

    def solver_object(self):
        """The :class:`~energyarch.solvers.Solver` this config declares (``solver`` with ``solver_params``)."""
        from ..solvers import make_solver

        params = dict(self.solver_params)
        if self.arch == "hyperset":
            params.setdefault("steps", self.steps)
            if params["steps"] == "descent":
                params.setdefault("max_step", DESCENT_MAX_STEP)
        return make_solver(self.solver, **params)

    def _term_specs(self) -> dict[str, tuple[str, dict]]:
        """Each term's own solver keys, ``name → (where they were given, keys)``: ``[[model.terms]]`` tables and
        ``solvers`` entries (a term given in both is refused)."""
        specs: dict[str, tuple[str, dict]] = {}
        if isinstance(self.terms, list):
            from .terms import build_energy

            names = build_energy(self.terms, self.heads, self.ff_ratio).names
            for i, (name, table) in enumerate(zip(names, self.terms)):
                if solver_spec(table):
                    specs[name] = (f"[[model.terms]] #{i + 1} ({name!r})", solver_spec(table))
        for name, spec in self.solvers.items():
            if name in specs:
                _fail(
                    "solvers",
                    self.solvers,
                    f"term {name!r} gives its solver keys in its [[model.terms]] table too; keep them in one place",
                )
            specs[name] = (f"ModelConfig.solvers[{name!r}]", spec)
        return specs

    def _check_term_solvers(self) -> None:
        if not isinstance(self.solvers, Mapping):
            _fail(
                "solvers",
                self.solvers,
                'give a table term name → { solver, solver_params, steps }, e.g. { attn = { solver = "momentum" } }',
            )
        self.solvers = {
            name: normalize_solver_spec(f"ModelConfig.solvers[{name!r}]", spec) for name, spec in self.solvers.items()
        }
        if self.arch != "hyperset":
            if self.solvers:
                _fail(
                    "solvers",
                    self.solvers,
                    f"solvers apply to arch='hyperset' only, not arch={self.arch!r}; drop the per-term solvers",
                )
            return
        specs = self._term_specs()
        names = self._names()
        unknown = sorted(set(specs) - set(names))
        if unknown:
            _fail("solvers", self.solvers, f"unknown term name(s) {unknown}; the terms are {names}")
        for name in names:
            where, spec = specs.get(name, ("", {}))
            try:
                solver = self._term_solver(spec)
            except EnergyArchError as err:
                raise ConfigError(f"{where}: {err}") from None
            if self.step_sizes == "fixed" and solver.steps != "free" and not self.fixed_step < solver.max_step:
                whose = f"term {name!r}'s" if where else "the"
                _fail(
                    "fixed_step",
                    self.fixed_step,
                    f"under steps={solver.steps!r} the step size is at most max_step="
                    f"{solver.max_step!r}; lower fixed_step or raise {whose} "
                    f"solver_params.max_step (or use steps='free')",
                )

    def _names(self) -> list[str]:
        """The term names, in declared order (without building the energy's spheres)."""
        if isinstance(self.terms, Energy):
            return self.terms.names
        if isinstance(self.terms, list):
            from .terms import build_energy

            return build_energy(self.terms, self.heads, self.ff_ratio).names
        return [self.term("attention").name, self.term("feedforward").name]

    def _term_solver(self, spec: Mapping[str, Any]):
        """The solver of a term with its own keys ``spec`` over the model's: another solver keeps only the model's
        step-rule keys (steps, max_step, backtrack, halvings); the term's ``steps`` wins over every other."""
        from ..compile import RULE_FIELDS
        from ..solvers import make_solver

        name = spec.get("solver", self.solver)
        model = {k: v for k, v in self.solver_params.items() if name == self.solver or k in RULE_FIELDS}
        params = {**model, **spec.get("solver_params", {})}
        if "steps" in spec:
            params["steps"] = spec["steps"]
        params.setdefault("steps", self.steps)
        if params["steps"] == "descent":
            params.setdefault("max_step", DESCENT_MAX_STEP)
        return make_solver(name, **params)

    def solver_objects(self, names: Optional[Sequence[str]] = None) -> dict:
        """One :class:`~energyarch.solvers.Solver` per term (``names``, default the energy's): the term's own
        (``solvers`` or its ``[[model.terms]]`` keys) over the model's ``solver``, ``solver_params``, ``steps``.

        >>> cfg = ModelConfig(d=16, heads=2, solver="momentum", solver_params={"momentum": 0.5},
        ...                   solvers={"ff": {"solver": "adam", "steps": "free"}})
        >>> {n: s.describe() for n, s in cfg.solver_objects().items()}  # doctest: +NORMALIZE_WHITESPACE
        {'attn': "momentum(momentum=0.5, convention='energyarch', steps='descent', max_step=1.0, halvings=4)",
         'ff': "adam(beta1=0.9, beta2=0.96, eps=1e-08, steps='free')"}
        """
        if self.arch != "hyperset":
            default = self.solver_object()
            return {n: default for n in (names if names is not None else self._names())}
        names = list(names) if names is not None else self._names()
        specs = self._term_specs()
        return {n: self._term_solver(specs[n][1] if n in specs else {}) for n in names}

    def _check_terms(self) -> None:
        check_terms(self)

    def _check_term(self, family: str) -> None:
        value = getattr(self, family)
        if isinstance(value, (Energy, Term)) and not (
            isinstance(value, Attention if family == "attention" else (FeedForward, GatedFeedForward))
        ):
            _fail(
                family,
                describe(value),
                "a model of several terms (or of other families) is "
                "ModelConfig(energy=E) in Python, [[model.terms]] tables in TOML",
            )
        cls = Attention if family == "attention" else FeedForward
        if isinstance(value, str):
            _named_term(family, value, self)
        elif isinstance(value, Mapping):
            value = normalize_declaration(family, value)
            setattr(self, family, value)
            _declared_term(family, value, self)
        elif isinstance(value, cls) or (family == "feedforward" and isinstance(value, GatedFeedForward)):
            if family == "attention" and isinstance(value, Attention) and value.heads != self.heads:
                _fail("attention", value, f"declares heads={value.heads} but heads={self.heads}; make them equal")
        else:
            _fail(
                family,
                value,
                f"give a preset name {tuple(_PRESETS[family])}, a catalog entry name, an inline "
                f"declaration (a table with keys {', '.join(DECLARATION_KEYS[family])}) or an "
                f"ea.{cls.__name__}",
            )

    @property
    def head_dim(self) -> int:
        return self.d // self.heads

    def term(self, family: str):
        """The ``'attention'`` or ``'feedforward'`` term this config declares (before ``norm_eps`` is applied)."""
        value = getattr(self, family)
        if isinstance(value, str):
            return _named_term(family, value, self)
        if isinstance(value, Mapping):
            return _declared_term(family, value, self)
        return value

    def resolved_eps(self, dtype=None) -> float:
        """The RMSNorm epsilon: ``norm_eps``, or the machine epsilon of ``dtype`` (default dtype if None)."""
        if self.norm_eps != "machine":
            return float(self.norm_eps)
        import torch

        return float(torch.finfo(dtype or torch.get_default_dtype()).eps)

    def declaration(self, family: str):
        """The term as plain data (a name or an inline table), or None if only Python can build it; for
        ``'terms'`` the list of ``[[model.terms]]`` tables."""
        value = getattr(self, family)
        if family == "terms":
            return declaration_of_terms(value)
        if isinstance(value, (str, Mapping)):
            return value
        return declaration_of(value)

    def energy(self, causal: bool = False) -> Energy:
        """The Hyper-SET energy E_ATTN + E_FF this config declares (Eqs. 19-20); with ``causal`` the attention
        term is its causal conditional form (:func:`causal_attention`), for language modelling."""
        if self.terms is not None:
            return config_energy(self, causal)
        attn, ff = self.term("attention"), self.term("feedforward")
        if self.norm_eps != 1e-6:
            eps = self.resolved_eps()
            attn, ff = _with_eps(attn, eps), _with_eps(ff, eps)
        if causal:
            attn = causal_attention(attn, self.interaction, self.self_term, self.interaction_rank)
        return attn + ff


def causal_attention(term, interaction: str = "shared", self_term: str = "exact", rank: int = 8):
    """``ea.CausalAttention`` with the f, K (and Φ), heads, sphere, beta and name of the attention ``term``
    (unchanged if it is one already): token t's conditional energy sees tokens s <= t only."""
    import energyarch

    cls = getattr(energyarch, "CausalAttention", None)
    if cls is None:
        raise ConfigError(
            "a causal task needs ea.CausalAttention for arch='hyperset', which this version of "
            "energyarch does not have; use arch='transformer' (the causal GPT-style baseline)"
        )
    if isinstance(term, cls):
        return term
    icls = INTERACTIONS[interaction]
    inter = cast(Any, icls)(rank=rank) if "rank" in {f.name for f in dataclasses.fields(icls)} else icls()
    return cls(
        f=term.f,
        K=term.K,
        heads=term.heads,
        constraint=term.constraint,
        beta=term.beta,
        name=term.name,
        interaction=inter,
        self_term=self_term,
    )


@dataclass
class TaskSpec:
    """What the model reads and predicts."""

    kind: str = "tokens"  # 'tokens' (integer ids, shape (B, N)) | 'image' (float, shape (B, C, H, W))
    vocab_size: int = 10  # tokens: number of distinct ids
    seq_len: int = 81  # tokens: sequence length N (learnable positional encoding)
    num_outputs: int = 9  # classes per token ('per_token') or per input ('cls')
    output: str = "per_token"  # 'per_token': logits (B, N, C) | 'cls': class-token readout, logits (B, C)
    image_shape: Optional[tuple] = None  # image: (C, H, W)
    patch_size: int = 4  # image: side of a square patch; must divide H and W
    causal: bool = False  # tokens: token t may depend on tokens <= t only (language modelling; seq_len is then the
    #   longest context, and shorter inputs are allowed)

    def __post_init__(self):
        _choice("TaskSpec", "kind", self.kind, ("tokens", "image"))
        if not isinstance(self.causal, bool) or (self.causal and (self.kind, self.output) != ("tokens", "per_token")):
            raise ConfigError(
                f"TaskSpec.causal={self.causal!r}: must be a bool, and True only with "
                f"kind='tokens', output='per_token' (got kind={self.kind!r}, output={self.output!r})"
            )
        _choice("TaskSpec", "output", self.output, ("per_token", "cls"))
        for name in ("vocab_size", "seq_len", "num_outputs", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"TaskSpec.{name}={value!r}: must be an integer >= 1")
        if self.kind == "image":
            shape = self.image_shape
            if (
                not isinstance(shape, (tuple, list))
                or len(shape) != 3
                or not all(isinstance(s, int) and s > 0 for s in shape)
            ):
                raise ConfigError(
                    f"TaskSpec.image_shape={shape!r}: give (C, H, W) as positive integers, e.g. (3, 32, 32)"
                )
            self.image_shape = tuple(shape)
            if shape[1] % self.patch_size or shape[2] % self.patch_size:
                raise ConfigError(
                    f"TaskSpec.patch_size={self.patch_size!r}: must divide H={shape[1]} and "
                    f"W={shape[2]}; e.g. patch_size=4 for 32x32 images"
                )

    @property
    def num_tokens(self) -> int:
        """Tokens the backbone sees (class token included when output='cls')."""
        if self.kind == "tokens":
            n = self.seq_len
        else:
            _, H, W = cast(tuple, self.image_shape)  # an image task has one
            n = (H // self.patch_size) * (W // self.patch_size)
        return n + (self.output == "cls")


_dataclass_init = ModelConfig.__init__


def _init(self, *args, energy=None, **kwargs):
    if energy is not None:
        if kwargs.get("terms") is not None:
            raise ConfigError("ModelConfig: give the energy once, as energy=E (Python) or terms=[...] (tables)")
        kwargs["terms"] = energy
    _dataclass_init(self, *args, **kwargs)


_init.__doc__ = _dataclass_init.__doc__
_init.__wrapped__ = _dataclass_init  # type: ignore[attr-defined]  # for inspect.signature
ModelConfig.__init__ = _init  # type: ignore[method-assign]  # ModelConfig(energy=E): the whole energy (in ``terms``)
