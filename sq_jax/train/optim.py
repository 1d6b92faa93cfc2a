"""Optimizer and learning-rate schedules from the config (optax)."""

from __future__ import annotations

import jax
import optax

from sq_jax.train.config import OptimSection


def warmup_steps(cfg: OptimSection, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return int(round(cfg.warmup_ratio * total_steps))


def lr_schedule(cfg: OptimSection, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine / linear decay to `final_lr_ratio * lr`, or constant."""
    warm = warmup_steps(cfg, total_steps)
    decay_steps = max(total_steps - warm, 1)
    final = cfg.lr * cfg.final_lr_ratio
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.final_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, final, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), decay], [warm])


def _decay_mask(params):
    # No weight decay on norm scales and biases (1-D), as is standard for decoder LMs.
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg: OptimSection, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = lr_schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask)
    )
    return optax.chain(*parts), schedule
