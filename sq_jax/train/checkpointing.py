"""A small orbax wrapper: async saves of params + optimizer state + data-iterator state + step, keep last K."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


def checkpoint_path(directory: str | Path) -> epath.Path:
    """A local folder (made absolute) or a URL such as gs://bucket/run/checkpoints, which orbax writes directly
    (every host of a pod slice writes its own shards there; pathlib would mangle the `//`)."""
    text = str(directory)
    return epath.Path(text) if "://" in text else epath.Path(Path(text).absolute())


class Checkpointer:
    def __init__(self, directory: str | Path, *, every_steps: int, keep: int, async_save: bool = True):
        self.directory = checkpoint_path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=every_steps,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, data_state: dict, meta: dict, force: bool = False) -> bool:
        """Save if `step` is due (or `force`); a step already on disk is never rewritten."""
        if step in self.manager.all_steps():
            return False
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, params_target: Any, opt_target: Any) -> tuple[Any, Any, dict, dict]:
        """Restore into targets (abstract arrays with shardings) so each device reads only its slices."""
        to_abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)  # noqa: E731
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(jax.tree.map(to_abstract, params_target)),
            opt_state=ocp.args.StandardRestore(jax.tree.map(to_abstract, opt_target)),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        out = self.manager.restore(step, args=args)
        return out.params, out.opt_state, out.data, out.meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
