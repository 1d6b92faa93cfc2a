"""AdamW's defaults are the ones the authors' runs used (Hugging Face Trainer: betas 0.9 / 0.999, eps 1e-8)."""

import jax.numpy as jnp
import numpy as np
import optax

from sq_jax.train.config import OptimSection
from sq_jax.train.optim import make_optimizer


def test_adamw_defaults_match_hugging_face() -> None:
    cfg = OptimSection(clip_norm=None, warmup_ratio=0.0, schedule="constant")
    assert (cfg.b1, cfg.b2, cfg.eps) == (0.9, 0.999, 1e-8)
    optimizer, _ = make_optimizer(cfg, total_steps=10)
    params = {"w": jnp.ones((2, 3))}
    grads = {"w": jnp.full((2, 3), 2.0)}
    _, state = optimizer.update(grads, optimizer.init(params), params)
    adam = next(s for s in jax_tree_leaves_states(state) if isinstance(s, optax.ScaleByAdamState))
    np.testing.assert_allclose(adam.nu["w"], (1 - 0.999) * 4.0, rtol=1e-6)  # b2 reaches the second moment
    np.testing.assert_allclose(adam.mu["w"], (1 - 0.9) * 2.0, rtol=1e-6)


def jax_tree_leaves_states(state):
    """Every optax state object inside a chain (nested tuples / masked wrappers)."""
    stack = [state]
    while stack:
        s = stack.pop()
        yield s
        if isinstance(s, tuple):
            stack.extend(s)
        inner = getattr(s, "inner_state", None)
        if inner is not None:
            stack.append(inner)
