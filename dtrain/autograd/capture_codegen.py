"""Straight-line Python for a captured step's tape (capture_tape.py): one function, no per-op loop.

A loop over the tape pays, for every op, a list gather, attribute reads of the op record and tests
of optional features; on a small model that is a third of the replay. ``generate`` writes the
tape out once as source: each op's forward as one call on local variables, then each live op's
backward with the gradient plumbing (fit, fan-in sum, leaf hand-over) written only where the tape
needs it. The semantics are those described in capture_tape.py; objects the code refers to (op
classes, parameters, constants, parameter tensors, expected shapes) are bound as globals of the
generated function, never printed into the source.
"""

from __future__ import annotations

import numpy as np

from . import engine
from .autocast import autocast_dtype


def generate(tape, mismatch):
    """Compile ``tape`` into ``run(args) -> (loss array, output arrays)``: forward, the tape's
    ``before_backward(loss)`` if any, then backward delivering leaf gradients.

    ``mismatch(op, out)`` is called when an op's output has not the traced type and shape: it returns the
    array made to fit (a NumPy scalar as a 0-d array) or raises.
    """
    gen = _Writer(tape, mismatch)
    gen.load_inputs()
    gen.forward()
    if tape.before_backward is not None:
        gen.line(f"{gen.bind('BEFORE', tape.before_backward)}(v{tape.root})")
    gen.backward()
    gen.line(f"return v{tape.root}, ({''.join(f'v{s}, ' for s in tape.outputs)})")
    src = "def run(args):\n" + "\n".join("    " + ln for ln in gen.lines) + "\n"
    namespace = dict(gen.names)
    exec(compile(src, f"<captured step: {len(tape.ops)} ops>", "exec"), namespace)
    run = namespace["run"]
    run.source = src
    return run


def generate_guard(tape, args, autocast):
    """``guard(args) -> bool``: true only when ``args`` have the signature the tape was traced with and the
    tape is still valid (parameters, buffers and replay guards as traced). CapturedStep tries the last
    tape's guard first, and checks the tapes it finds under a signature with theirs."""
    names = {"AC": autocast, "AUTOCAST": autocast_dtype, "META": tape.meta_of}
    lines = [f"if len(args) != {len(args)} or AUTOCAST() != AC:", "    return False"]

    def array_check(var: str, arr, tag: str) -> None:  # type, shape, dtype (and device off the CPU) of an array
        names.update({f"AT{tag}": type(arr), f"S{tag}": arr.shape, f"D{tag}": arr.dtype})
        cond = f"type({var}) is not AT{tag} or {var}.shape != S{tag} or {var}.dtype != D{tag}"
        if type(arr) is not np.ndarray:
            names[f"DEV{tag}"] = getattr(arr, "device", None)
            cond += f" or getattr({var}, 'device', None) != DEV{tag}"
        lines.extend([f"if {cond}:", "    return False"])

    for i, a in enumerate(args):
        names[f"T{i}"] = type(a)
        lines.append(f"a = args[{i}]")
        if hasattr(a, "_is_dtrain_tensor"):
            names.update({f"R{i}": a._requires_grad, f"L{i}": a._node is None})
            lines += [f"if type(a) is not T{i} or a._tangent is not None or a._requires_grad != R{i} or "
                      f"(a._node is None) != L{i}:", "    return False", "d = a.data"]
            array_check("d", a.data, str(i))
        elif hasattr(a, "shape") and hasattr(a, "dtype") and not isinstance(a, np.generic):
            array_check("a", a, str(i))
        else:
            names[f"V{i}"] = a
            lines += [f"if type(a) is not T{i} or not (a == V{i}):", "    return False"]
    for s, t in enumerate(tape.state):
        names[f"P{s}"] = t
        lines += [f"if not P{s}._requires_grad or P{s}._node is not None:", "    return False", f"d = P{s}.data"]
        array_check("d", t.data, f"P{s}")
    for j, ((owner, name), meta) in enumerate(zip(tape.attrs, tape.attr_meta)):
        names.update({f"B{j}": owner, f"BM{j}": meta})
        lines += [f"if META(getattr(B{j}, {name!r}, None)) != BM{j}:", "    return False"]
    for k, guard in enumerate(tape.guards):
        names[f"G{k}"] = guard
        lines += [f"if not G{k}():", "    return False"]
    src = "def guard(args):\n" + "\n".join("    " + ln for ln in lines + ["return True"]) + "\n"
    exec(compile(src, "<captured step guard>", "exec"), names)
    guard = names["guard"]
    guard.source = src
    return guard


class _Writer:
    def __init__(self, tape, mismatch):
        self.tape = tape
        self.lines: list[str] = []
        self.names: dict = {"SEED": engine.seed_gradient, "KEY": engine._array_key, "FIT": engine._fit,
                            "FIN": engine._finish_leaf, "MIS": mismatch, "BADLEN": _bad_count,
                            "ND": tape.ops[tape.root - tape.out_base].out_meta[0]}  # the tape's array type

    def line(self, text: str) -> None:
        self.lines.append(text)

    def bind(self, name: str, obj) -> str:
        self.names[name] = obj
        return name

    def load_inputs(self) -> None:
        t = self.tape
        for i in range(t.nargs):
            self.line(f"v{i} = args[{i}].data" if t.arg_is_tensor[i] else f"v{i} = args[{i}]")
        for s, tensor in enumerate(t.state):
            self.line(f"v{t.nargs + s} = {self.bind(f'S{s}', tensor)}.data")
        for j, (owner, name) in enumerate(t.attrs):
            if not name.isidentifier():
                raise ValueError(f"captured step: buffer name {name!r} is not an identifier")
            self.line(f"v{t.attr_base + j} = {self.bind(f'A{j}', owner)}.{name}")
        for c, value in enumerate(t.consts):
            self.line(f"v{t.const_base + c} = {self.bind(f'K{c}', value)}")

    def forward(self) -> None:
        t = self.tape
        last_use = {}
        for k, op in enumerate(t.ops):
            for s in op.ins + tuple(i for _, i in op.array_params):
                last_use[s] = k
        for k, op in enumerate(t.ops):
            f = f"f{k}" if op.live else "f"
            self.line(f"{f} = {self.bind(f'C{k}', op.cls)}()")
            self.line(f"{f}.needs_grad = {self.bind(f'N{k}', op.needs)}")
            ins = ", ".join(f"v{s}" for s in op.ins)
            kw = ", ".join(f"{name!r}: v{s}" for name, s in op.array_params)
            params = self.bind(f"P{k}", op.params)
            if kw:
                params = f"{{**{params}, {kw}}}"
            if op.check is not None:
                self.line(f"p = {self.bind(f'CHK{k}', op.check)}(({ins}{',' if ins else ''}), {params})")
                params = "p"
            call_args = ", ".join(([ins] if ins else []) + ([f"**{params}"] if (op.params or kw or op.check) else []))
            call = f"{f}.forward({call_args})"
            self.line(f"v{op.out} = {call}")
            self.bind(f"T{k}", op.out_meta[0])
            self.bind(f"H{k}", op.out_meta[1])
            self.line(f"if type(v{op.out}) is not T{k} or v{op.out}.shape != H{k}:")
            self.line(f"    v{op.out} = MIS({self.bind(f'O{k}', op)}, v{op.out})")
            for s in sorted(set(op.ins)):  # drop activations no later op reads (ops keep what backward needs)
                if last_use.get(s) == k and s >= t.out_base and s != t.root and s not in t.outputs:
                    self.line(f"v{s} = None")

    def backward(self) -> None:
        t = self.tape
        self.line(f"g{t.root} = SEED(v{t.root})")
        self.line(f"handed = {{KEY(g{t.root})}}")
        fan_in: dict[int, int] = {}
        for op in t.live:
            for _, s, _ in op.edges:
                fan_in[s] = fan_in.get(s, 0) + 1
        for s in sorted(fan_in):
            self.line(f"g{s} = None")
            if fan_in[s] > 1:
                self.line(f"o{s} = False")
        k_of = {id(op): k for k, op in enumerate(t.ops)}
        for op in t.live:
            self.op_backward(k_of[id(op)], op, fan_in)

    def op_backward(self, k: int, op, fan_in: dict) -> None:
        t = self.tape
        self.line(f"if g{op.out} is not None:")
        self.line(f"    gs = f{k}.backward(g{op.out})")
        self.line("    if type(gs) is not tuple:")
        self.line("        gs = (gs,)")
        self.line(f"    if len(gs) != {len(op.ins)}:")
        self.line(f"        BADLEN(f{k}, gs, {len(op.ins)})")
        for j, s, meta in op.edges:
            e, shape, dtype = self.bind(f"E{k}_{j}", meta), self.bind(f"ES{k}_{j}", meta[0]), f"ED{k}_{j}"
            self.bind(dtype, meta[1])
            self.line(f"    gi = gs[{j}]")
            self.line("    if gi is not None:")
            self.line(f"        if type(gi) is not ND or gi.shape != {shape} or (gi.dtype is not {dtype} "
                      f"and gi.dtype != {dtype}):")
            self.line(f"            gi = FIT(gi, {e}, f{k})")
            if fan_in[s] == 1:
                self.line(f"        g{s} = gi")
            else:  # first fan-in: a new buffer this pass owns, so later additions are in place
                self.line(f"        if g{s} is None:")
                self.line(f"            g{s} = gi")
                self.line(f"        elif o{s}:")
                self.line(f"            g{s} += gi")
                self.line("        else:")
                self.line(f"            g{s} = g{s} + gi")
                self.line(f"            o{s} = True")
        self.line(f"f{k} = None")  # its saved activations go now, as the engine's release does
        if op.out != t.root:
            self.line(f"g{op.out} = None")
        for s in op.finish:
            leaf = f"args[{s}]" if s < t.nargs else f"S{s - t.nargs}"
            self.line(f"if g{s} is not None:")
            self.line(f"    FIN({leaf}, g{s}, handed)")
            self.line(f"    g{s} = None")


def _bad_count(fn, grads, n: int) -> None:
    raise RuntimeError(f"op {fn.name}: backward returned {len(grads)} gradients for {n} inputs")
