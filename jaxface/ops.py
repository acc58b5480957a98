"""Array helpers shared by the stages (no face-specific meaning)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def materialize(tree):
    """Identity that makes XLA keep `tree` in memory: a conditional's result cannot be fused.

    Without it XLA:CPU fuses cheap elementwise producers into each gather that reads them
    and recomputes them per gathered element, reading their inputs at random. The predicate
    is true for any input (NaN included) but not a compile-time constant; XLA drops an
    `optimization_barrier` in this position.
    """
    leaf = jax.tree.leaves(tree)[0]
    keep = ~(leaf.reshape(-1)[0] > jnp.inf)
    return jax.lax.cond(keep, lambda t: t, lambda t: jax.tree.map(jnp.zeros_like, t), tree)


def cross(a, b):
    """Cross product of 3-vectors given as component tuples (x, y, z) of equal shapes."""
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def normalize_parts(vec, eps: float = 1e-12):
    """(vec / max(|vec|, eps), the scale used, |vec| > eps) for a component tuple, as
    torch.nn.functional.normalize (the references' normals)."""
    sq = vec[0] * vec[0] + vec[1] * vec[1] + vec[2] * vec[2]
    ok = sq > eps * eps
    inv = jnp.where(ok, 1.0 / jnp.sqrt(jnp.where(ok, sq, 1.0)), 1.0 / eps)
    return tuple(c * inv for c in vec), inv, ok


def normalize_vjp(unit, inv, ok, g):
    """Cotangent of vec from that of unit = vec * inv: (g - unit (unit . g)) * inv where the
    length is above eps, g * inv (a constant scale) below it."""
    dot = jnp.where(ok, unit[0] * g[0] + unit[1] * g[1] + unit[2] * g[2], 0.0)
    return tuple((gc - u * dot) * inv for u, gc in zip(unit, g))
