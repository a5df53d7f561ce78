"""Where a small dtrain training step's time goes: per phase against the same step written in NumPy by hand,
and cProfile's self time grouped by area (the training-throughput benchmark's profile)."""

from __future__ import annotations

import time

import numpy as np

from .profile import profile_calls, profile_tables
from .train_throughput_twins import LR, MOMENTUM


class NumpyMLPPhases:
    """The small MLP's training step written directly in NumPy, same arrays and update rule as dtrain
    (torch-layout weights, softmax cross-entropy, SGD momentum with a scratch buffer): the array work
    dtrain cannot avoid, split into the same phases."""

    def __init__(self, model, batches):
        sd = model.state_dict()
        self.w1, self.b1 = sd["0.weight"].copy(), sd["0.bias"].copy()
        self.w2, self.b2 = sd["2.weight"].copy(), sd["2.bias"].copy()
        self.params = [self.w1, self.b1, self.w2, self.b2]
        self.bufs = [None] * 4
        self.scratch = [np.empty_like(p) for p in self.params]
        self.batches = batches

    def phases(self, i: int, t: dict) -> None:
        """One step on batch ``i``, adding each phase's seconds to ``t``."""
        pc = time.perf_counter
        x, y = self.batches[i % len(self.batches)]
        n = len(x)
        t0 = pc()
        h = x @ self.w1.T
        h += self.b1
        a = np.maximum(h, 0)
        out = a @ self.w2.T
        out += self.b2
        t1 = pc()
        z = out - out.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        loss = np.mean(np.log(s[:, 0]) - z[rows, y])
        t2 = pc()
        t3 = pc()  # zero_grad: nothing to do
        g = e / s
        g[rows, y] -= 1
        g *= np.float32(1.0 / n)
        gw2 = g.T @ a
        gb2 = g.sum(axis=0)
        ga = g @ self.w2
        ga *= a > 0
        gw1 = ga.T @ x
        gb1 = ga.sum(axis=0)
        t4 = pc()
        for k, grad in enumerate((gw1, gb1, gw2, gb2)):
            buf = self.bufs[k]
            if buf is None:
                buf = self.bufs[k] = grad.copy()
            else:
                buf *= MOMENTUM
                buf += grad
            np.multiply(buf, LR, out=self.scratch[k])
            self.params[k] -= self.scratch[k]
        t5 = pc()
        del loss
        for key, dt_ in zip(PHASES,
                            (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            t[key] += dt_


def dtrain_phases(raw, i: int, t: dict) -> None:
    """One dtrain step on batch ``i``, adding each phase's seconds to ``t``."""
    import dtrain.nn.functional as F

    pc = time.perf_counter
    x, y = raw.batches[i % len(raw.batches)]
    t0 = pc()
    out = raw.model(x)
    t1 = pc()
    loss = F.cross_entropy(out, y)
    t2 = pc()
    raw.opt.zero_grad()
    t3 = pc()
    loss.backward()
    t4 = pc()
    raw.opt.step()
    t5 = pc()
    for key, dt_ in zip(PHASES,
                        (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
        t[key] += dt_


PHASES = ("forward", "loss", "zero_grad", "backward", "step")


def area(filename: str, funcname: str) -> str:
    """Where a cProfile entry's self time belongs."""
    f = filename.replace("\\", "/")
    if "/dtrain/" in f:
        rel = f.split("/dtrain/", 1)[1]
        if rel.startswith("autograd/engine"):
            return "autograd engine (dtrain/autograd/engine.py)"
        if rel.startswith("autograd/ops") or rel.startswith("autograd/function"):
            return "autograd ops + Function (forward/backward bodies, incl. inline NumPy operators)"
        if rel.startswith("autograd/tensor"):
            return "Tensor wrapper (dtrain/autograd/tensor.py)"
        if rel.startswith("nn/"):
            return "nn Modules / functional (dtrain/nn)"
        if rel.startswith("optim/"):
            return "optimizer (dtrain/optim)"
        if rel.startswith("backend"):
            return "backend helpers (dtrain/backend.py)"
        return f"other dtrain ({rel})"
    if filename == "~":  # C functions: builtins and NumPy methods/functions called by name
        if "numpy" in funcname or "ndarray" in funcname or funcname.startswith("<built-in method numpy"):
            return "NumPy C functions called by name (np.*, ndarray methods)"
        return "Python builtins (isinstance, getattr, len, heapq, ...)"
    if "/numpy/" in f:
        return "NumPy Python wrappers"
    return "other Python (benchmark loop, stdlib)"


def profile_mlp(raw, ref: NumpyMLPPhases, steps: int) -> dict:
    """Phase timings of the small MLP (dtrain step ``raw`` vs NumPy by hand ``ref``, same model and batches)
    and a cProfile breakdown of ``raw.step``."""
    t_dt, t_np, scratch = (dict.fromkeys(PHASES, 0.0) for _ in range(3))
    for i in range(50):  # warm-up
        dtrain_phases(raw, i, scratch)
        ref.phases(i, scratch)
    for i in range(steps):
        dtrain_phases(raw, i, t_dt)
        ref.phases(i, t_np)
    prof = profile_calls(raw.step, max(100, steps // 2), area, top=8)
    return {**prof, "phases": {k: (t_dt[k] / steps, t_np[k] / steps) for k in PHASES}, "steps": steps,
            "prof_steps": prof["steps"], "prof_total_us": prof["self_ms_per_step"] * 1e3}


def profile_lines(p: dict) -> list[str]:
    """The 'where the time goes' section: phases against NumPy by hand, the cProfile tables, findings."""
    ph = p["phases"]
    tot_dt = sum(v[0] for v in ph.values())
    tot_np = sum(v[1] for v in ph.values())
    over = {k: v[0] - v[1] for k, v in ph.items()}
    tot_over = tot_dt - tot_np
    biggest = sorted(over.items(), key=lambda kv: kv[1], reverse=True)
    ops = [a for a in p["areas"] if a[1].startswith("autograd ops")]
    engine = [a for a in p["areas"] if a[1].startswith("autograd engine")]
    numpy_c = [a for a in p["areas"] if a[1].startswith("NumPy C")]
    lines = [
        f"## Where the time goes: dtrain `mlp` step (64-128-10, batch 64), {p['steps']} steps", "",
        "Per phase, dtrain against a hand-written NumPy step doing the same array work with the same update rule "
        "(the array work without an engine; it includes NumPy's own per-call cost of about 1 µs per operation):", "",
        "| phase | dtrain µs/step | NumPy by hand µs/step | dtrain overhead µs | share of dtrain's overhead |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in PHASES:
        d, n = ph[k]
        lines.append(f"| {k} | {d * 1e6:.1f} | {n * 1e6:.1f} | {(d - n) * 1e6:.1f} | "
                     f"{(d - n) / tot_over * 100:.0f}% |")
    lines += [f"| **total** | **{tot_dt * 1e6:.1f}** | **{tot_np * 1e6:.1f}** | **{tot_over * 1e6:.1f}** | 100% |",
              "",
              f"cProfile self time over {p['prof_steps']} raw steps ({p['prof_total_us']:.0f} µs/step under the "
              "profiler, which inflates Python calls), grouped by where it is spent; NumPy operators written inline "
              "(`a @ b`, `a * b`) count in the self time of the dtrain function that runs them:", "",
              *profile_tables(p, "share of self time")]
    lines += [
        "", "Findings:", "",
        f"- The NumPy work itself (the same NumPy calls made by hand: kernels plus NumPy's own dispatch) takes "
        f"{tot_np * 1e6:.0f} µs of the {tot_dt * 1e6:.0f} µs step (**{tot_np / tot_dt * 100:.0f}%**); the other "
        f"**{tot_over / tot_dt * 100:.0f}%** ({tot_over * 1e6:.0f} µs) is dtrain's own Python overhead (graph "
        "recording, engine walk, module calls, optimizer loop).",
        f"- The overhead is largest in {biggest[0][0]} ({biggest[0][1] * 1e6:.0f} µs), then {biggest[1][0]} "
        f"({biggest[1][1] * 1e6:.0f} µs) and {biggest[2][0]} ({biggest[2][1] * 1e6:.0f} µs); zero_grad is "
        f"{ph['zero_grad'][0] * 1e6:.1f} µs.",
    ]
    if ops and engine and numpy_c:
        lines.append(
            f"- Under cProfile, {ops[0][0] * 100:.0f}% of self time is in op/Function bodies (this includes the inline "
            f"NumPy kernels), {engine[0][0] * 100:.0f}% in the engine's graph walk and {numpy_c[0][0] * 100:.0f}% in "
            "NumPy functions called by name; the rest is Tensor/Module/optimizer bookkeeping and builtins.")
    return lines
