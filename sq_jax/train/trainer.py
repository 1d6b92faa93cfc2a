"""The one training loop: QFT, SFT (and QPO) differ only in their task. Owns mesh, data, checkpoints, metrics."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from sq_jax.configlib import config_hash, to_dict
from sq_jax.data.batching import PackedBatches, concat_examples, eval_batches, host_shard, process_shares
from sq_jax.data.sources import Record, read_records
from sq_jax.models.checkpoint import copy_side_files, load_model
from sq_jax.models.hf_io import resolve_model_dir, save_pretrained
from sq_jax.models.tokenizer import detect_prompt_format, load_tokenizer
from sq_jax.parallel import distributed
from sq_jax.parallel.mesh import make_mesh
from sq_jax.prompts.formats import get_prompt_format
from sq_jax.train.checkpointing import Checkpointer
from sq_jax.train.config import TrainConfig
from sq_jax.train.lora import add_adapters, merged_params, save_peft_adapter, trainable_filter
from sq_jax.train.memory_plan import refuse_if_too_big
from sq_jax.train.metrics import MetricsWriter, device_peak_tflops, training_flops_per_token
from sq_jax.train.optim import make_optimizer
from sq_jax.train.reference import ReferenceScorer, cache_key, load_cached, save_cached
from sq_jax.train.step import batch_sharding, make_eval_step, make_train_step, means
from sq_jax.train.tasks import make_task

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    steps: int
    final_loss: float | None
    eval_loss: float | None
    output_dir: Path
    data_stats: dict[str, Any]
    eval_metrics: dict[str, float] | None = None


def split_eval(records: list[Record], count: int, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out `count` records chosen by `seed`; the rest keep their order."""
    if count <= 0:
        return records, []
    if count >= len(records):
        raise ValueError(f"eval_count={count} leaves no training records (only {len(records)} records)")
    held = set(np.random.default_rng(seed).permutation(len(records))[:count].tolist())
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def _global_min(value: int) -> int:
    if jax.process_count() == 1:
        return value
    return int(np.min(multihost_utils.process_allgather(np.asarray([value]))))


class Trainer:
    """Holds the sharded state and runs steps; built by `run_training` from a `TrainConfig`."""

    def __init__(self, cfg: TrainConfig):
        distributed.maybe_initialize(
            cfg.mesh.distributed, cfg.mesh.coordinator_address, cfg.mesh.num_processes, cfg.mesh.process_id
        )
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
        rows_axis = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        micro = cfg.micro_batch_size or cfg.global_batch_size
        if micro % rows_axis:
            raise ValueError(
                f"micro_batch_size={micro} is not divisible by the data-parallel size {rows_axis} "
                f"(mesh data={self.mesh.shape['data']} x fsdp={self.mesh.shape['fsdp']})"
            )
        if micro % jax.process_count():
            raise ValueError(f"micro_batch_size={micro} is not divisible by {jax.process_count()} processes")
        self.micro = micro
        self.model_dir = resolve_model_dir(cfg.model.path)  # a hub id: its local copy (side files come from it)
        self.model = load_model(
            self.model_dir, mesh=self.mesh, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype,
            remat=cfg.model.remat, **({"head": cfg.model.head} if cfg.model.head else {}),
        )
        refuse_if_too_big(cfg, self.model.config)  # before the first step runs out of memory
        self.tokenizer = load_tokenizer(str(self.model_dir))
        fmt_name = cfg.model.prompt_format
        self.prompt_format = get_prompt_format(fmt_name) if fmt_name else detect_prompt_format(self.tokenizer)
        self.task = make_task(cfg, self.tokenizer, self.prompt_format)
        self.seq_len = self.task.row_length(cfg.data)
        self._build_data()
        self.total_steps = self.train_batches.num_batches
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.tx, self.schedule = make_optimizer(cfg.optim, self.total_steps)
        self._split_trainable()
        self.opt_state = self._on_mesh(jax.jit(self.tx.init)(self.params))
        self.param_shardings = _shardings(self.params)
        frozen_shardings = _shardings(self.frozen) if self.frozen is not None else None
        self.train_step = make_train_step(
            self.graphdef, self.tx, self.task.loss_fn, (self.param_shardings, _shardings(self.opt_state)), self.mesh,
            frozen_shardings, dropout_seed=cfg.seed if cfg.lora is not None and cfg.lora.dropout else None,
        )
        self.eval_step = make_eval_step(self.graphdef, self.task.loss_fn, self.param_shardings, self.mesh,
                                        frozen_shardings)
        self.reference: ReferenceScorer | None = None
        if self.task.needs_reference:
            self._setup_reference()
        self.step = 0
        self.data_state: dict[str, Any] | None = None
        ckpt_dir = cfg.checkpoint.dir or str(self.output_dir / "checkpoints")
        self.checkpointer = Checkpointer(
            ckpt_dir, every_steps=cfg.checkpoint.every_steps, keep=cfg.checkpoint.keep,
            async_save=cfg.checkpoint.async_save,
        )
        self.metrics = MetricsWriter(self.output_dir, tensorboard=cfg.tensorboard)
        self.flops_per_token = training_flops_per_token(self.model.config, self.seq_len)
        self.peak = device_peak_tflops(override=cfg.peak_tflops_per_device)

    def _split_trainable(self) -> None:
        """params: what the optimizer updates (every weight, or LoRA's adapters and a score head); frozen: the
        rest (LoRA's base, passed to each step, never copied); base_graphdef: the model without adapters."""
        self.base_graphdef = nnx.graphdef(self.model)
        self.frozen = None
        if self.cfg.lora is None:
            self.graphdef, self.params = nnx.split(self.model, nnx.Param)
            return
        self.model = add_adapters(self.model, self.cfg.lora, self.mesh, self.cfg.seed)
        self.graphdef, self.params, self.frozen = nnx.split(self.model, trainable_filter(self.model), nnx.Param)

    def _frozen_args(self) -> tuple:
        return () if self.frozen is None else (self.frozen,)

    def _on_mesh(self, tree):
        """Optimizer moments inherit their param's sharding; scalars (step counts) are replicated on the mesh."""
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated),
                            tree)

    # ------------------------------------------------------------------------------------------------ data
    def _read(self, sources) -> list[Record]:
        records: list[Record] = []
        for s in sources:
            records += read_records(s.path, fields=self.task.fields, field_map=s.field_map, split=s.split,
                                    limit=s.limit)
        return records

    def _tokenize(self, records: list[Record]) -> Any:
        return self.task.build_examples(records)

    def _build_data(self) -> None:
        d, cfg = self.cfg.data, self.cfg
        if not d.sources:
            raise ValueError("data.sources is empty: give at least one dataset")
        records = self._read(d.sources)
        eval_records: list[Record] = []
        if d.eval_sources:
            eval_records = self._read(d.eval_sources)
        else:
            records, eval_records = split_eval(records, d.eval_count, d.seed)
        parts = [self._tokenize(share) for share in process_shares(records, d.shares)]
        train = concat_examples(parts)
        starts = np.cumsum([0] + [len(p) for p in parts])
        groups = [range(a, b) for a, b in zip(starts[:-1], starts[1:])]
        rows_per_host = cfg.global_batch_size // jax.process_count()
        pack = dict(seq_len=self.seq_len, rows_per_batch=rows_per_host, epochs=cfg.epochs, seed=d.seed,
                    open_bins=d.open_bins, pad_id=self._pad_id(), groups=groups)
        probe = PackedBatches(train, **pack)
        # Hosts pack different shares; all must run the same number of steps.
        batches = _global_min(probe.num_batches)
        self.train_batches = probe if batches == probe.num_batches else PackedBatches(train, **pack,
                                                                                      max_batches=batches)
        self.eval_examples = self._tokenize(host_shard(eval_records)) if eval_records else None
        self.data_stats = {**train.stats, **self.train_batches.stats, "batches": self.train_batches.num_batches}
        if self.eval_examples is not None:
            self.data_stats.update({f"eval_{k}": v for k, v in self.eval_examples.stats.items()})
            self.data_stats["eval_examples"] = len(self.eval_examples)
        log.info("data: %s", self.data_stats)

    def _example_ids_path(self) -> Path:
        """Where this process logs the examples of each step: hosts train on disjoint shares, so one file each."""
        if jax.process_count() == 1:
            return self.output_dir / "example_ids.jsonl"
        return self.output_dir / f"example_ids.process{jax.process_index()}.jsonl"

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    def _device_batch(self, host_batch: dict[str, np.ndarray], accumulated: bool,
                      keys: tuple[str, ...] | None = None) -> dict[str, jax.Array]:
        sharding = batch_sharding(self.mesh, accumulated)
        out = {}
        for key in keys or self.train_batches.examples.batch_keys:
            local = host_batch[key]
            if accumulated:
                local = local.reshape(self.cfg.grad_accum_steps, -1, *local.shape[1:])
            out[key] = jax.make_array_from_process_local_data(sharding, local)
        if self.reference is not None and "reference_logps" not in out:
            out = self.reference.attach(out, accumulated)
        return out

    # ------------------------------------------------------------------------------------------- reference
    def _setup_reference(self) -> None:
        """Frozen reference params (the starting policy unless preference.reference_path says otherwise), then
        either precomputed log-probs for every pair (cached beside the run) or an online scorer."""
        pref, cfg = self.cfg.preference, self.cfg
        path = pref.reference_path or cfg.model.path
        graphdef, shardings = self.graphdef, self.param_shardings
        if path == cfg.model.path and self.frozen is not None:
            # LoRA: the reference is the frozen base with the adapters left out; no second copy of the weights.
            graphdef, params, shardings = self.base_graphdef, self.frozen, _shardings(self.frozen)
        elif path == cfg.model.path:
            # Training donates the policy's buffers, so an online reference needs its own copy.
            params = jax.tree.map(jax.numpy.copy, self.params) if pref.reference == "online" else self.params
        else:
            ref_model = load_model(path, mesh=self.mesh, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype)
            graphdef, params = nnx.split(ref_model, nnx.Param)
            shardings = _shardings(params)
        scorer = ReferenceScorer(graphdef, params, shardings, self.mesh, pref.max_pairs_per_row)
        if pref.reference == "online":
            self.reference = scorer
            return
        key = cache_key(reference=path, dtype=cfg.model.dtype, data=to_dict(cfg.data), pairs=pref.max_pairs_per_row,
                        processes=jax.process_count())
        for name, pairs in (("train", self.train_batches.examples), ("eval", self.eval_examples)):
            if pairs is None:
                continue
            cache = self.output_dir / "reference_logps" / f"{name}-{jax.process_index()}.npz"
            logps = load_cached(cache, key, pairs.ids)
            if logps is None:
                start = time.perf_counter()
                logps = scorer.precompute(
                    pairs, self.seq_len, self.micro // jax.process_count(), self._pad_id(),
                    lambda b: self._device_batch(b, accumulated=False, keys=tuple(b)), _global_max,
                )
                save_cached(cache, key, pairs.ids, logps)
                log.info("reference log-probs of %d %s pairs in %.1fs", len(pairs), name, time.perf_counter() - start)
            pairs.reference_logps = logps

    # ------------------------------------------------------------------------------------------ checkpoints
    def maybe_restore(self) -> bool:
        step = self.checkpointer.latest_step()
        if step is None:
            return False
        self.params, self.opt_state, self.data_state, meta = self.checkpointer.restore(
            step, self.params, self.opt_state
        )
        if meta.get("config_hash") != self._resume_hash():
            raise ValueError(
                f"checkpoint at {self.checkpointer.directory} step {step} was written by a different config "
                "(model, data, optimizer or batch changed); use a new output_dir or checkpoint.dir"
            )
        self.step = int(meta["step"])
        log.info("resumed from step %d", self.step)
        return True

    def _resume_hash(self) -> str:
        # Everything that changes the sequence of updates; logging and checkpoint cadence may change freely.
        c = self.cfg
        parts = {"task": c.task, "model": to_dict(c.model), "data": to_dict(c.data), "optim": to_dict(c.optim),
                 "batch": [c.global_batch_size, c.epochs, c.max_steps, c.seed], **self.task.resume_sections(c)}
        if c.lora is not None:
            parts["lora"] = to_dict(c.lora)
        return config_hash(parts)

    def _save(self, force: bool = False) -> None:
        meta = {"step": self.step, "config_hash": self._resume_hash()}
        self.checkpointer.save(self.step, self.params, self.opt_state, self.data_state or {}, meta, force=force)

    # ------------------------------------------------------------------------------------------------ loops
    def evaluate(self) -> dict[str, float] | None:
        """The task's held-out metrics (mean loss; perplexity or reward accuracy...); all hosts run the same
        number of batches."""
        if self.eval_examples is None:
            return None
        per_host = self.micro // jax.process_count()
        totals: dict[str, float] = {}
        for batch in eval_batches(self.eval_examples, self.seq_len, per_host, self._pad_id(), _global_max):
            device = self._device_batch(batch, accumulated=False, keys=self.eval_examples.batch_keys)
            for k, v in jax.device_get(self.eval_step(self.params, device, *self._frozen_args())).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        mean = means(totals)
        return {k: float(v) for k, v in self.task.summarize(mean).items()}

    def train(self) -> TrainResult:
        cfg = self.cfg
        self.maybe_restore()
        iterator = self.train_batches.iterator(self.data_state)
        ids_log = self._example_ids_path().open("a") if cfg.log_example_ids else None
        bar = tqdm(total=self.total_steps, initial=self.step, desc=cfg.task, disable=jax.process_index() != 0)
        last_loss = None
        window_start = time.perf_counter()
        pending: list[tuple[int, dict]] = []
        while self.step < self.total_steps:
            host_batch = next(iterator)
            batch = self._device_batch(host_batch, accumulated=True)
            self.params, self.opt_state, metrics = self.train_step(self.params, self.opt_state, batch,
                                                                   *self._frozen_args(), step_number=self.step)
            self.step += 1
            self.data_state = iterator.get_state()
            pending.append((self.step, metrics))
            if ids_log is not None:
                ids = host_batch["example_index"]
                ids = ids[ids >= 0].tolist()
                names = [self.train_batches.examples.ids[i] for i in ids]
                ids_log.write(json.dumps({"step": self.step, "ids": ids, "record_ids": names}) + "\n")
                ids_log.flush()
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                last_loss = self._log(pending, window_start, bar)
                pending, window_start = [], time.perf_counter()
            self._save()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
                self._log_eval()
        if pending:
            last_loss = self._log(pending, window_start, bar)
        bar.close()
        if ids_log is not None:
            ids_log.close()
        self._save(force=True)
        self.checkpointer.wait()
        eval_metrics = self._log_eval()
        if cfg.checkpoint.export_hf:
            self.export(self.output_dir / "hf")
        self.checkpointer.close()
        self.metrics.close()
        return TrainResult(self.step, last_loss, eval_metrics["loss"] if eval_metrics else None,
                           self.output_dir, self.data_stats, eval_metrics)

    def _log(self, pending: list[tuple[int, dict]], since: float, bar) -> float:
        host = jax.device_get([m for _, m in pending])  # waits for the steps in flight
        elapsed = max(time.perf_counter() - since, 1e-9)
        tokens = float(sum(m["tokens"] for m in host))
        tflops = self.flops_per_token * tokens / elapsed / 1e12
        for (step, _), m in zip(pending, host):
            values = {k: float(v) for k, v in m.items() if k != "count"}
            values["learning_rate"] = float(self.schedule(step - 1))
            values.update(self.task.step_counts(float(m["count"])))
            if step == pending[-1][0]:
                values.update(tokens_per_s=tokens / elapsed, tflops_per_s=tflops)
                if self.peak:
                    values["mfu"] = tflops / (self.peak * jax.device_count())
            self.metrics.write(step, values)
        last = float(host[-1]["loss"])
        bar.update(len(pending))
        bar.set_postfix(loss=f"{last:.4f}", tok_s=f"{tokens / elapsed:,.0f}")
        return last

    def _log_eval(self) -> dict[str, float] | None:
        metrics = self.evaluate()
        if metrics is not None:
            self.metrics.write(self.step, metrics, kind="eval")
            log.info("eval at step %d: %s", self.step, metrics)
        return metrics

    def current_model(self):
        """The trained model (with LoRA: the adapters folded into the base weights)."""
        if self.frozen is None:
            return nnx.merge(self.graphdef, self.params)
        adapters, trained = nnx.split_state(self.params, nnx.LoRAParam, ...)
        base = nnx.merge_state(self.frozen, trained)
        return nnx.merge(self.base_graphdef, merged_params(base, adapters, self.cfg.lora))

    def export(self, out_dir: Path) -> Path:
        out = save_pretrained(self.current_model(), out_dir, dtype=self.cfg.model.param_dtype)
        if jax.process_index() == 0:
            copy_side_files(self.model_dir, out)
        lora = self.cfg.lora
        if lora is not None and lora.export_adapter and self.model.config.head != "score":
            adapters = nnx.split_state(self.params, nnx.LoRAParam, ...)[0]
            save_peft_adapter(adapters, self.model.config, lora, self.output_dir / "adapter", str(self.cfg.model.path))
        return out


def _shardings(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


def _global_max(value: int) -> int:
    return -_global_min(-value)


def run_training(cfg: TrainConfig) -> TrainResult:
    return Trainer(cfg).train()
