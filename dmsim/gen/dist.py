"""The distributions a scenario may give for a size, a count or a time.

Written in YAML as one of:

    3.5                                    a constant
    {uniform: [a, b]}                      uniform on [a, b)
    {exponential: mean}                    exponential with that mean
    {lognormal: {median: m, sigma: s}}     lognormal; instead of sigma, a second
    {lognormal: {median: m, p75: q}}       quantile: p75, p90 or p99 (sigma follows)
    {choice: {value: weight, ...}}         discrete, weights need not sum to 1
    {values: [v1, v2, ...]}                discrete, equally likely

with optional `min:` / `max:` beside the kind to clip, e.g.
`{lognormal: {median: 500, p75: 2000}, max: 1000000}`. Quantiles are the natural
way to write a measured distribution ("half under 500 bytes, three quarters under
2 KB" is median 500, p75 2000).
"""

from __future__ import annotations

import math

import numpy as np

Z = {"p75": 0.6744897501960817, "p90": 1.2815515655446004, "p99": 2.3263478740408408}


class Dist:
    kind = ""

    def __init__(self, lo=None, hi=None):
        self.lo, self.hi = lo, hi

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = self._sample(rng, n)
        if self.lo is not None or self.hi is not None:
            x = np.clip(x, self.lo, self.hi)
        return x

    def _sample(self, rng, n):
        raise NotImplementedError

    def one(self, rng) -> float:
        return float(self.sample(rng, 1)[0])

    def mean(self) -> float:
        """The mean before clipping (an upper bound estimate with `max`)."""
        raise NotImplementedError


class Const(Dist):
    def __init__(self, v, **kw):
        super().__init__(**kw)
        self.v = float(v)

    def _sample(self, rng, n):
        return np.full(n, self.v)

    def mean(self):
        return self.v


class Uniform(Dist):
    def __init__(self, a, b, **kw):
        super().__init__(**kw)
        self.a, self.b = float(a), float(b)

    def _sample(self, rng, n):
        return rng.uniform(self.a, self.b, n)

    def mean(self):
        return (self.a + self.b) / 2


class Exponential(Dist):
    def __init__(self, m, **kw):
        super().__init__(**kw)
        self.m = float(m)

    def _sample(self, rng, n):
        return rng.exponential(self.m, n)

    def mean(self):
        return self.m


class Lognormal(Dist):
    def __init__(self, median, sigma, **kw):
        super().__init__(**kw)
        self.mu, self.sigma = math.log(median), float(sigma)

    def _sample(self, rng, n):
        return rng.lognormal(self.mu, self.sigma, n)

    def mean(self):
        m = math.exp(self.mu + self.sigma ** 2 / 2)
        return min(m, self.hi) if self.hi is not None else m


class Choice(Dist):
    def __init__(self, values, weights, **kw):
        super().__init__(**kw)
        self.values = np.asarray(values, np.float64)
        w = np.asarray(weights, np.float64)
        self.p = w / w.sum()

    def _sample(self, rng, n):
        return self.values[rng.choice(len(self.values), size=n, p=self.p)]

    def mean(self):
        return float((self.values * self.p).sum())


def _num(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{what}: expected a number, got {v!r}")
    return float(v)


def parse_dist(spec) -> Dist:
    """A Dist from its YAML form; ValueError says what is wrong."""
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return Const(spec)
    if not isinstance(spec, dict):
        raise ValueError(f"expected a number or a distribution "
                         f"({{lognormal: ...}}, {{choice: ...}}, ...), got {spec!r}")
    spec = dict(spec)
    clip = {}
    for k, name in (("min", "lo"), ("max", "hi")):
        if k in spec:
            clip[name] = _num(spec.pop(k), k)
    if len(spec) != 1:
        raise ValueError(f"expected one distribution kind (const, uniform, exponential, "
                         f"lognormal, choice, values) besides min/max, got {sorted(spec)}")
    (kind, arg), = spec.items()
    if kind == "const":
        return Const(_num(arg, kind), **clip)
    if kind == "uniform":
        if not isinstance(arg, list) or len(arg) != 2:
            raise ValueError("uniform: expected [low, high]")
        a, b = _num(arg[0], "uniform"), _num(arg[1], "uniform")
        if b < a:
            raise ValueError(f"uniform: high {b} is below low {a}")
        return Uniform(a, b, **clip)
    if kind == "exponential":
        m = _num(arg, kind)
        if m <= 0:
            raise ValueError("exponential: the mean must be positive")
        return Exponential(m, **clip)
    if kind == "lognormal":
        if not isinstance(arg, dict) or "median" not in arg:
            raise ValueError("lognormal: expected {median: m, sigma: s} (or p75/p90/p99 for sigma)")
        extra = [k for k in arg if k not in ("median", "sigma", *Z)]
        if extra:
            raise ValueError(f"lognormal.{extra[0]}: unknown key (median, sigma, p75, p90, p99)")
        med = _num(arg["median"], "lognormal.median")
        if med <= 0:
            raise ValueError("lognormal.median: must be positive")
        given = [k for k in ("sigma", *Z) if k in arg]
        if len(given) != 1:
            raise ValueError("lognormal: give exactly one of sigma, p75, p90, p99")
        k = given[0]
        v = _num(arg[k], f"lognormal.{k}")
        if k == "sigma":
            sigma = v
        else:
            if v <= med:
                raise ValueError(f"lognormal.{k}: {v} must be above the median {med}")
            sigma = math.log(v / med) / Z[k]
        if sigma < 0:
            raise ValueError("lognormal.sigma: must not be negative")
        return Lognormal(med, sigma, **clip)
    if kind == "choice":
        if not isinstance(arg, dict) or not arg:
            raise ValueError("choice: expected {value: weight, ...}")
        vals = [_num(v, "choice value") for v in arg]
        ws = [_num(w, f"choice weight of {v}") for v, w in arg.items()]
        if any(w < 0 for w in ws) or sum(ws) <= 0:
            raise ValueError("choice: weights must be non-negative with a positive sum")
        return Choice(vals, ws, **clip)
    if kind == "values":
        if not isinstance(arg, list) or not arg:
            raise ValueError("values: expected a non-empty list")
        vals = [_num(v, "values") for v in arg]
        return Choice(vals, [1.0] * len(vals), **clip)
    raise ValueError(f"unknown distribution {kind!r} (const, uniform, exponential, "
                     "lognormal, choice, values)")
