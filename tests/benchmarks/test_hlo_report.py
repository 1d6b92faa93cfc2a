"""`benchmarks/hlo_report.py`: kernels and their traffic read off optimised HLO (the decode-block analysis)."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import hlo_report  # noqa: E402

# A decode-like module as XLA's GPU compiler prints it: a 4-trip loop whose body looks up one embedding row, runs
# a matmul and writes one row of a cache in place; the entry relayouts a weight once before the loop.
MODULE = """HloModule jit_step

%fused_lookup (param_0: f32[1000,64], param_1: s32[1]) -> f32[1,64] {
  %param_0 = f32[1000,64]{1,0} parameter(0)
  %param_1 = s32[1]{0} parameter(1)
  ROOT %gather.1 = f32[1,64]{1,0} gather(%param_0, %param_1), offset_dims={1}, slice_sizes={1,64}
}

%fused_write (param_0.1: f32[16,64], param_1.1: f32[1,64], param_2: s32[]) -> f32[16,64] {
  %param_0.1 = f32[16,64]{1,0} parameter(0)
  %param_1.1 = f32[1,64]{1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %zero = s32[] constant(0)
  ROOT %dus = f32[16,64]{1,0} dynamic-update-slice(%param_0.1, %param_1.1, %param_2, %zero)
}

%gemm_fusion_dot.7_computation (p0: f32[1,64], p1: f32[64,64]) -> f32[1,64] {
  %p0 = f32[1,64]{1,0} parameter(0)
  %p1 = f32[64,64]{1,0} parameter(1)
  ROOT %dot = f32[1,64]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body.3 (carry: (s32[], f32[16,64], f32[1000,64], f32[64,64])) -> (s32[], f32[16,64], f32[1000,64], f32[64,64]) {
  %carry = (s32[], f32[16,64]{1,0}, f32[1000,64]{1,0}, f32[64,64]{0,1}) parameter(0)
  %i = s32[] get-tuple-element(%carry), index=0
  %cache = f32[16,64]{1,0} get-tuple-element(%carry), index=1
  %table = f32[1000,64]{1,0} get-tuple-element(%carry), index=2
  %w = f32[64,64]{0,1} get-tuple-element(%carry), index=3
  %ids = s32[1]{0} bitcast(%i)
  %row = f32[1,64]{1,0} fusion(%table, %ids), kind=kLoop, calls=%fused_lookup, metadata={op_name="jit(step)/take"}
  %mm = f32[1,64]{1,0} fusion(%row, %w), kind=kCustom, calls=%gemm_fusion_dot.7_computation
  %new = f32[16,64]{1,0} fusion(%cache, %mm, %i), kind=kLoop, calls=%fused_write
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[16,64]{1,0}, f32[1000,64]{1,0}, f32[64,64]{0,1}) tuple(%next, %new, %table, %w)
}

%cond.4 (carry.1: (s32[], f32[16,64], f32[1000,64], f32[64,64])) -> pred[] {
  %carry.1 = (s32[], f32[16,64]{1,0}, f32[1000,64]{1,0}, f32[64,64]{0,1}) parameter(0)
  %i.1 = s32[] get-tuple-element(%carry.1), index=0
  %four = s32[] constant(4)
  ROOT %lt = pred[] compare(%i.1, %four), direction=LT
}

ENTRY %main.5 (cache.2: f32[16,64], table.2: f32[1000,64], w.2: f32[64,64]) -> f32[16,64] {
  %cache.2 = f32[16,64]{1,0} parameter(0)
  %table.2 = f32[1000,64]{1,0} parameter(1)
  %w.2 = f32[64,64]{1,0} parameter(2)
  %w.t = f32[64,64]{0,1} copy(%w.2)
  %start = s32[] constant(0)
  %init = (s32[], f32[16,64]{1,0}, f32[1000,64]{1,0}, f32[64,64]{0,1}) tuple(%start, %cache.2, %table.2, %w.t)
  %loop = (s32[], f32[16,64]{1,0}, f32[1000,64]{1,0}, f32[64,64]{0,1}) while(%init), condition=%cond.4, body=%body.3, backend_config={"known_trip_count":{"n":"4"}}
  ROOT %result = f32[16,64]{1,0} get-tuple-element(%loop), index=1
}
"""


def test_kernels_and_bytes_of_a_decode_like_module():
    comps = hlo_report.parse(MODULE)
    (body, trips), = hlo_report.loop_bodies(comps)
    assert trips == 4
    assert [k.kind for k in body.kernels] == ["fused_lookup", "gemm_fusion_dot", "fused_write", "add"]
    lookup, matmul, write, _ = body.kernels
    assert lookup.bytes == 4 * 64 + 4 + 4 * 64  # one table row (not the whole table), the id, the result
    assert lookup.op_name == "jit(step)/take"
    assert matmul.bytes == 4 * 64 + 4 * 64 * 64 + 4 * 64
    assert write.bytes == 2 * (4 * 64 + 4)  # in place: the update moves, the 16-row cache does not
    entry = next(c for c in comps.values() if c.is_entry)
    assert [(k.op, k.bytes) for k in entry.kernels] == [("copy", 2 * 4 * 64 * 64)]  # the once-per-block relayout
    assert hlo_report.summary(body.kernels)["gemm_fusion_dot"] == 1
    # 2 us floor per kernel: the matmul's 16.9 KB at 1 GB/s is 16.9 us; the others sit on the floor.
    seconds = hlo_report.modelled_seconds(body.kernels, 1e9, 2e-6)
    assert abs(seconds - (matmul.bytes / 1e9 + 3 * 2e-6)) < 1e-12


def test_a_compiled_scan_is_found_with_its_trip_count():
    def run(w, x):
        return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=5)[0]

    text = jax.jit(run).lower(jnp.ones((32, 32)), jnp.ones((4, 32))).compile().as_text()
    loops = hlo_report.loop_bodies(hlo_report.parse(text))
    assert len(loops) == 1
    body, trips = loops[0]
    assert trips == 5
    assert body.kernels and sum(k.bytes for k in body.kernels) >= 4 * 32 * 32  # the weight is read each step
