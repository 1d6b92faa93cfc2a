"""Read an optimised XLA HLO module (the text of `compiled.as_text()`): kernels and the bytes they move.

A GPU program runs one kernel per top-level fusion / custom call / copy of its computations; the decode block's
cost on an accelerator is those kernels' memory traffic plus a per-kernel floor (launch, ramp-up, tail). This
module counts them per computation and estimates each kernel's traffic from its operand and result shapes.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8e4m3fn|f8e5m2)\[([0-9,]*)\](?:\{([0-9,]*)[^}]*\})?")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][a-z\-]*)\((.*)$")
_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) \(.*\{$")
# Ops that launch nothing: they alias, name or sequence buffers.
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "conditional", "call",
         "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency", "iota"}


def shape_bytes(text: str) -> int:
    """Bytes of every array in a (possibly tuple) shape string."""
    total = 0
    for dtype, dims, _ in _ARRAY.findall(text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _DTYPE_BYTES.get(dtype, 4)
    return total


@dataclasses.dataclass
class Kernel:
    name: str
    op: str
    kind: str  # the fused computation's stem ("fused_reduce", "gemm_fusion_dot", ...) or the op
    result: str
    bytes: int  # operands read + result written (an in-place update counts its update, not its buffer)
    op_name: str  # the JAX source op from the metadata


@dataclasses.dataclass
class Instruction:
    name: str
    result: str
    op: str
    operands: list[str]
    rest: str


@dataclasses.dataclass
class Computation:
    name: str
    is_entry: bool
    instructions: list[Instruction] = dataclasses.field(default_factory=list)
    kernels: list[Kernel] = dataclasses.field(default_factory=list)
    loops: list[tuple[str, str, int | None]] = dataclasses.field(default_factory=list)  # body, cond, trips


_SLICING = {"gather", "dynamic-slice", "slice"}


def _operand_reads(fused: Computation | None, operand_bytes: list[int]) -> list[int]:
    """Bytes a fusion reads of each operand: a parameter used only by gathers / slices reads what they take."""
    if fused is None:
        return operand_bytes
    params: dict[int, str] = {}
    for ins in fused.instructions:
        if ins.op == "parameter":
            params[int(re.match(r"(\d+)", ins.rest).group(1))] = ins.name
    reads = list(operand_bytes)
    for index, pname in params.items():
        users = [ins for ins in fused.instructions if pname in ins.operands]
        if index < len(reads) and users and all(u.op in _SLICING and u.operands[0] == pname for u in users):
            reads[index] = sum(shape_bytes(u.result) for u in users)
    return reads


def parse(text: str) -> dict[str, Computation]:
    comps: dict[str, Computation] = {}
    current: Computation | None = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = Computation(header.group(2), bool(header.group(1)))
            comps[current.name] = current
            continue
        if current is None:
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            name, result, op, rest = m.groups()
            operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0]) if op != "parameter" else []
            current.instructions.append(Instruction(name, result, op, operands, rest))
    for comp in comps.values():
        shapes = {ins.name: ins.result for ins in comp.instructions}
        for ins in comp.instructions:
            if ins.op == "while":
                body = re.search(r"body=%([\w.\-]+)", ins.rest).group(1)
                cond = re.search(r"condition=%([\w.\-]+)", ins.rest).group(1)
                trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.rest)
                comp.loops.append((body, cond, int(trip.group(1)) if trip else None))
            if ins.op in _FREE:
                continue
            called = re.search(r"calls=%([\w.\-]+)", ins.rest)
            fused = comps.get(called.group(1)) if called else None
            kind = re.sub(r"(\.\d+)+$", "", re.sub(r"_computation$", "", called.group(1))) if called else ins.op
            reads = _operand_reads(fused, [shape_bytes(shapes.get(o, "")) for o in ins.operands])
            root = fused.instructions[-1].op if fused and fused.instructions else ins.op
            if root in ("dynamic-update-slice", "scatter") and reads:
                moved = 2 * (sum(reads) - max(reads))  # in place: the update is read and written, not the buffer
            else:
                moved = sum(reads) + shape_bytes(ins.result)
            op_name = re.search(r'op_name="([^"]*)"', ins.rest)
            comp.kernels.append(Kernel(ins.name, ins.op, kind, ins.result.split("{")[0], moved,
                                       op_name.group(1) if op_name else ""))
    return comps


def loop_bodies(comps: dict[str, Computation]) -> list[tuple[Computation, int | None]]:
    entry = next(c for c in comps.values() if c.is_entry)
    return [(comps[body], trip) for body, _, trip in entry.loops]


def summary(kernels: list[Kernel]) -> Counter:
    return Counter(k.kind for k in kernels)


def modelled_seconds(kernels: list[Kernel], bandwidth: float, floor_s: float) -> float:
    """Each kernel costs its traffic at `bandwidth`, and never less than `floor_s` (launch, ramp-up, tail)."""
    return sum(max(k.bytes / bandwidth, floor_s) for k in kernels)
