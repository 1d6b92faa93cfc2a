"""The engine's decode block as XLA compiles it for a GPU: kernels per decode step and the bytes they move.

    python benchmarks/decode_hlo.py --shape 1b                  # on a GPU or TPU machine: for its own chip
    JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 python benchmarks/decode_hlo.py --target h200   # no GPU
    python benchmarks/decode_hlo.py --target v5e                # no TPU

Without the chip, XLA's compiler runs deviceless against a target description, as for the chip but without
autotuning: GPU targets need `pip install "jax-cuda12-plugin[with-cuda]==<jax version>"` (in an environment of
its own: it must not be the default backend), TPU targets `pip install "libtpu==<jax[tpu]'s pin>"`.

For each slot count it compiles the engine's decode block (`--steps` decode steps, greedy or sampled, the decode
state in the layout XLA picks for it, as the engine does: `sampling/state_layout.py`),
reads the optimised HLO with `hlo_report` and prints: kernels per decode step by kind; bytes moved per step
against the ideal (every weight once, one embedding row per slot, the whole KV cache once); kernels that run once
per block outside the step loop (relayouts of params or cache show up here); and a modelled step time, where each
kernel costs its bytes at HBM bandwidth and never less than `--kernel-floor-us`. The model is not a measurement:
`generate_throughput.py` measures.
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import hlo_report
from shapes import SHAPES, qwen2_config
from sq_jax.models.transformer import Transformer
from sq_jax.sampling.state_layout import StatePrograms, empty_state

HBM_BYTES_PER_S = {"h100": 3.35e12, "h200": 4.8e12, "v5e": 0.82e12, "v5 lite": 0.82e12, "v5p": 2.76e12,
                   "v6e": 1.64e12, "v6 lite": 1.64e12}
_TPU_TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}  # deviceless: one chip of a host
_TARGETS = {
    # Device descriptions for deviceless compilation (the fields XLA's GPU compiler reads).
    "h100": dict(core_count=132, memory_bandwidth=3352320000000, l2_cache_size=52428800, clock_rate_ghz=1.98,
                 device_memory_size=84929347584, name="NVIDIA H100 80GB HBM3"),
    "h200": dict(core_count=132, memory_bandwidth=4800000000000, l2_cache_size=52428800, clock_rate_ghz=1.98,
                 device_memory_size=150754820096, name="NVIDIA H200"),
}


def target_config(name: str) -> str:
    t = _TARGETS[name]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: {t['core_count']} fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {t['memory_bandwidth']} l2_cache_size: {t['l2_cache_size']} clock_rate_ghz: {t['clock_rate_ghz']}
  device_memory_size: {t['device_memory_size']} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 }} registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{t['name']}"
"""


def placement(target: str | None) -> NamedSharding | None:
    """A one-device sharding on the local chip (None: jit's default) or on a deviceless target's first chip."""
    if target is None:
        return None
    from jax.experimental import topologies

    if target in _TPU_TOPOLOGIES:
        topology = topologies.get_topology_desc(platform="tpu", topology_name=_TPU_TOPOLOGIES[target])
    else:
        topology = topologies.get_topology_desc(platform="cuda", target_config=target_config(target),
                                                topology="1x1x1")
    return NamedSharding(Mesh(np.asarray(topology.devices[:1]), ("x",)), PartitionSpec())


def compile_decode_block(cfg, slots: int, cache_length: int, steps: int, sampling: bool, where) -> str:
    """The optimised HLO of the engine's decode block, its state in the formats the engine would choose."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=where)  # noqa: E731
    params = jax.tree.map(lambda x: spec(x.shape, x.dtype), params)
    make_state = functools.partial(empty_state, cfg, slots, cache_length)
    one_place = where or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    programs = StatePrograms(graphdef, params, spec((1,), jnp.int32), make_state,
                             jax.tree.map(lambda _: one_place, jax.eval_shape(make_state)), steps)
    return programs.lowered_block(sampling).compile().as_text()


def ideal_bytes_per_step(cfg, slots: int, cache_length: int) -> int:
    item = jnp.dtype(cfg.dtype).itemsize
    weights = (cfg.num_params() - cfg.vocab_size * cfg.hidden_size * (not cfg.tie_word_embeddings)) * item
    rows = slots * cfg.hidden_size * item
    kv = 2 * cfg.num_layers * slots * cfg.num_kv_heads * cfg.head_dim * cache_length * item
    return weights + rows + kv


def report(text: str, cfg, slots: int, cache_length: int, bandwidth: float, floor_s: float) -> dict:
    comps = hlo_report.parse(text)
    entry = next(c for c in comps.values() if c.is_entry)
    (body, trips), = hlo_report.loop_bodies(comps)
    per_step = sum(k.bytes for k in body.kernels)
    ideal = ideal_bytes_per_step(cfg, slots, cache_length)
    modelled = hlo_report.modelled_seconds(body.kernels, bandwidth, floor_s)
    return {
        "slots": slots, "steps_per_block": trips,
        "kernels_per_step": len(body.kernels), "kernels_per_layer": round(len(body.kernels) / cfg.num_layers, 1),
        "kinds_per_step": dict(hlo_report.summary(body.kernels).most_common()),
        "bytes_per_step": per_step, "ideal_bytes_per_step": ideal, "bytes_over_ideal": round(per_step / ideal, 3),
        "kernels_per_block_outside_loop": len(entry.kernels),
        "bytes_per_block_outside_loop": sum(k.bytes for k in entry.kernels),
        "modelled_ms_per_step": round(modelled * 1e3, 3),
        "modelled_fraction_of_roofline": round(ideal / bandwidth / modelled, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--slots", default="1,64")
    parser.add_argument("--cache-length", type=int, default=392, help="128-token prompts + 256 new + 8")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--sampling", action="store_true", help="the sampling block (default: greedy)")
    parser.add_argument("--target", choices=sorted(_TARGETS) + sorted(_TPU_TOPOLOGIES), default=None,
                        help="compile deviceless for this chip (default: the local device)")
    parser.add_argument("--kernel-floor-us", type=float, default=2.0)
    parser.add_argument("--dump", default=None, help="folder to write each optimised HLO module to")
    args = parser.parse_args()

    cfg = qwen2_config(args.shape, dtype=args.dtype, param_dtype=args.dtype)
    where = placement(args.target)
    kind = args.target or jax.devices()[0].device_kind.lower()
    bandwidth = next((v for k, v in HBM_BYTES_PER_S.items() if k in kind), None)
    if bandwidth is None:
        raise SystemExit(f"no HBM bandwidth known for {kind!r}; known: {', '.join(HBM_BYTES_PER_S)}")
    for slots in (int(s) for s in args.slots.split(",")):
        text = compile_decode_block(cfg, slots, args.cache_length, args.steps, args.sampling, where)
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            with open(os.path.join(args.dump, f"decode_{args.shape}_{slots}.txt"), "w") as f:
                f.write(text)
        row = report(text, cfg, slots, args.cache_length, bandwidth, args.kernel_floor_us * 1e-6)
        print(json.dumps({"device": kind, "shape": args.shape, "sampling": args.sampling, **row}), flush=True)


if __name__ == "__main__":
    main()
