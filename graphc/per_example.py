"""Per-example gradients and per-example clipping (DP-SGD), built as ordinary graph nodes.

When the rows of a batch never mix, one backward pass of ``sum(losses)`` gives, at every activation, each
row's gradient of its own loss. A parameter's gradient is the sum over the batch of its share at each use;
keeping the shares apart instead of summing them gives the per-example gradients — for ``x @ W`` the outer
products ``x[i] ⊗ dz[i]`` — at the cost of about one backward pass, not ``m`` of them.

Rows never mix is checked first: every op between the batched inputs and the losses is walked with the
position of the batch axis, and an op that reduces over it, contracts it in a matmul, normalizes along it or
reshapes it away raises a GraphError naming that op.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import sympy

from graphc import shapes
from graphc.autodiff import grad
from graphc.dsl import Tensor, fill
from graphc.errors import GraphError
from graphc.ops import OPS, is_float, reduced_shape
from graphc.ops.elementwise import Maximum, arg, ew, scalar
from graphc.ops.linalg import matmul
from graphc.ops.reduce import reduce_sum
from graphc.ops.shape import broadcast_to, random_normal, reshape, swap_last, transpose

WHO = "per_example_grads"


# -- where the batch axis is: one pass over the ops between the batched inputs and the losses ------------
def _mixes(node, ins, what: str) -> GraphError:
    who = f"{node.op} {node.name!r} {shapes.fmt(node.shape)}" if node.name else node.label
    operands = ", ".join(i.label for i in ins)
    return GraphError(f"{WHO}: {who} {what} [operands: {operands}], so one example's loss would depend on the "
                      "other examples of the batch (batch statistics?); per-example gradients need every op "
                      "between the inputs and the losses to keep the examples apart")


def _same(a, b) -> bool:
    return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


def _source_axis(node, batch):
    if node.op != "input":
        return None  # params, constants and fills are shared by every example
    if node.shape and _same(node.shape[0], batch):
        return 0
    if any(_same(d, batch) for d in node.shape):
        raise GraphError(f"{WHO}: input {node.label} has the batch dim {batch} on another axis than the first")
    return None


def _ew_axis(node, ins, axes):
    placed = {len(node.shape) - len(i.shape) + a for i, a in zip(ins, axes) if a is not None}
    if len(placed) > 1:
        raise _mixes(node, ins, "combines examples from different axes")
    return placed.pop() if placed else None


def _reduce_axis(node, ins, axes):
    (a,) = axes
    if a in node.attr("axes"):
        raise _mixes(node, ins, f"reduces over the batch axis (axis {a})")
    return a if node.attr("keepdims") else a - sum(1 for r in node.attr("axes") if r < a)


def _reshape_axis(node, ins, axes):
    (a,), (x,) = axes, ins
    before = shapes.numel(x.shape[:a])
    for b, d in enumerate(node.shape):
        if _same(shapes.numel(node.shape[:b]), before) and _same(d, x.shape[a]):
            return b
    raise _mixes(node, ins, f"reshapes {shapes.fmt(x.shape)} to {shapes.fmt(node.shape)}, merging the batch axis")


def _slice_axis(node, ins, axes):
    (a,), (x,) = axes, ins
    start, stop, step = node.attr("index")[a]
    if not (_same(start, 0) and _same(stop, x.shape[a]) and step == 1):
        raise _mixes(node, ins, "slices the batch axis")
    return a


def _unslice_axis(node, ins, axes):
    (a,), (x,) = axes, ins
    start, stop, step = node.attr("index")[a]
    if not (_same(start, 0) and _same(stop, node.shape[a]) and _same(stop, x.shape[a]) and step == 1):
        raise _mixes(node, ins, "pads the batch axis")
    return a


def _concat_axis(node, ins, axes):
    placed = {a for a in axes if a is not None}
    if node.attr("axis") in placed:
        raise _mixes(node, ins, f"concatenates along the batch axis (axis {node.attr('axis')})")
    if len(placed) > 1:
        raise _mixes(node, ins, "combines examples from different axes")
    return placed.pop()


def _along_axis(node, ins, axes):  # softmax, log_softmax
    (a,) = axes
    if a == node.attr("axis"):
        raise _mixes(node, ins, "normalizes along the batch axis")
    return a


def _xent_axis(node, ins, axes):
    axis = node.attr("axis")
    t, (az, at) = ins[1], axes
    placed = set()
    if az is not None:
        if az == axis:
            raise _mixes(node, ins, "normalizes along the batch axis")
        placed.add(az - (az > axis))
    if at is not None:
        if is_float(t.dtype):
            if at == axis:
                raise _mixes(node, ins, "normalizes along the batch axis")
            at -= at > axis
        placed.add(at)
    if len(placed) > 1:
        raise _mixes(node, ins, "pairs logits and labels of different examples")
    return placed.pop()


def _matmul_axis(node, ins, axes):
    (a, b), (aa, ab) = ins, axes
    rows, cols = int(len(a.shape) > 1), int(len(b.shape) > 1)
    lead = len(node.shape) - rows - cols
    placed = set()
    if aa is not None:
        if aa == len(a.shape) - 1:
            raise _mixes(node, ins, f"contracts the batch axis of {a.label}")
        placed.add(len(node.shape) - 1 - cols if aa == len(a.shape) - 2 else lead - (len(a.shape) - 2) + aa)
    if ab is not None:
        if ab == len(b.shape) - 1 - cols:
            raise _mixes(node, ins, f"contracts the batch axis of {b.label}")
        placed.add(len(node.shape) - 1 if ab == len(b.shape) - 1 else lead - (len(b.shape) - 2) + ab)
    if len(placed) > 1:
        raise _mixes(node, ins, "multiplies examples of one operand with examples of the other")
    return placed.pop()


def _copies_axis(node, x, batch):
    """0 where a shared tensor is broadcast to one copy per example (a class token), else None."""
    stretched = len(x.shape) < len(node.shape) or x.shape[0] == 1
    return 0 if node.shape and _same(node.shape[0], batch) and stretched else None


AXIS_RULES = {
    "ew": _ew_axis, "sum": _reduce_axis, "max": _reduce_axis, "logsumexp": _reduce_axis,
    "reshape": _reshape_axis, "slice": _slice_axis, "unslice": _unslice_axis, "concat": _concat_axis,
    "softmax": _along_axis, "log_softmax": _along_axis, "softmax_cross_entropy": _xent_axis,
    "matmul": _matmul_axis,
    "transpose": lambda node, ins, axes: node.attr("perm").index(axes[0]),
    "broadcast_to": lambda node, ins, axes: axes[0] + len(node.shape) - len(ins[0].shape),
    "one_hot": lambda node, ins, axes: axes[0],
}


def batch_axes(graph, loss: int, batch) -> dict[int, int | None]:
    """node id -> the axis holding the examples (None: shared by all), for ``loss`` and its ancestors."""
    axes: dict[int, int | None] = {}
    for nid in graph.order(graph.needed([loss])):
        node = graph.nodes[nid]
        if not node.inputs:
            axes[nid] = _source_axis(node, batch)
            continue
        ins = [graph.nodes[i] for i in node.inputs]
        got = [axes[i] for i in node.inputs]
        if all(a is None for a in got):
            axes[nid] = _copies_axis(node, ins[0], batch) if node.op == "broadcast_to" else None
        elif node.op in AXIS_RULES:
            axes[nid] = AXIS_RULES[node.op](node, ins, got)
        else:
            raise GraphError(f"{WHO}: cannot tell whether {node.op} {node.label} keeps the examples apart")
    return axes


def _batch_dim(losses: Tensor):
    """The batch dim of the per-example losses ``(m,)``, checked."""
    if not isinstance(losses, Tensor):
        raise GraphError(f"{WHO}: losses must be a tensor, not {type(losses).__name__}")
    if losses.ndim != 1:
        hint = " (pass the per-example losses, before gc.mean / gc.sum)" if losses.ndim == 0 else ""
        raise GraphError(f"{WHO}: losses {losses.node.label} must be a vector (m,) with one loss per example"
                         + hint)
    if not is_float(losses.dtype):
        raise GraphError(f"{WHO}: losses {losses.node.label} must be float, not {losses.dtype}")
    batch = losses.shape[0]
    graph = losses.graph
    firsts = {graph.nodes[i].shape[0] for i in graph.needed([losses.id])
              if graph.nodes[i].op == "input" and graph.nodes[i].shape}
    if not any(_same(d, batch) for d in firsts):
        symbolic = [d for d in firsts if not d.is_number]
        if len(symbolic) == 1:  # walk with the inputs' batch dim, to name the op that lost it
            batch_axes(graph, losses.id, symbolic[0])
        raise GraphError(f"{WHO}: losses {losses.node.label} do not run over the batch: no input they depend "
                         f"on has {batch} as its first dim")
    return batch


# -- one use of a shared tensor by a batched node: its per-example gradient ------------------------------
@dataclass(frozen=True)
class Term:
    """One use's per-example gradient: ``full`` (m, *shape), or the rows' outer products ``a[i] ⊗ g[i]``.

    Dense layers give outer terms, so clipping can take their norms as ``|a[i]|·|g[i]|`` and their weighted
    sum as one matmul, without the (m, k, c) array.
    """
    full: Tensor | None = None
    a: Tensor | None = None
    g: Tensor | None = None

    def materialize(self, batch) -> Tensor:
        if self.full is not None:
            return self.full
        a, g = self.a, self.g
        return ew(arg(0) * arg(1), [reshape(a, (batch, a.shape[1], 1)), reshape(g, (batch, 1, g.shape[1]))],
                  "per-example outer product")


def keep_batch(G: Tensor, axis: int, shape, batch, aligned: bool = False) -> Tensor:
    """``(batch, *shape)``: ``G`` summed over the axes a tensor of ``shape`` was broadcast along, but not ``axis``.

    ``shape`` lines up with ``G`` without its batch axis, or with all of ``G`` where ``aligned`` (then its
    dim on the batch axis must be 1: the tensor is shared by the examples).
    """
    target = tuple(shape)
    if aligned and axis >= G.ndim - len(shape):
        k = axis - (G.ndim - len(shape))
        if shape[k] != 1:
            raise GraphError(f"{WHO}: the shared tensor of shape {shapes.fmt(shape)} spans the batch axis of "
                             f"{G.node.label}; its per-example gradient is not supported")
        shape = shape[:k] + shape[k + 1:]
    rest = [i for i in range(G.ndim) if i != axis]
    lead = len(rest) - len(shape)
    sum_axes = tuple(rest[:lead]) + tuple(rest[lead + i] for i, d in enumerate(shape)
                                          if d == 1 and G.shape[rest[lead + i]] != 1)
    G = reduce_sum(G, sum_axes, keepdims=True)
    if any(d != 1 for d in G.shape[:axis]):
        G = transpose(G, (axis, *rest))
    return reshape(G, (batch, *target))


def _matmul_term(slot, g, a, b, axes):
    """Outer-product forms for a shared matmul operand whose partner has the examples on its rows/columns."""
    if slot == 1 and a.ndim >= 2 and axes[a.id] == a.ndim - 2:  # x @ W: W's share is x[i] ⊗ dz[i]
        if a.ndim == 2 and b.ndim == 2:
            return Term(a=a, g=g)
        if b.ndim == 1:
            G = ew(arg(0) * arg(1), [a, reshape(g, (*g.shape, 1))])
            return G, G.ndim - 2
        G = ew(arg(0) * arg(1), [reshape(a, (*a.shape, 1)), reshape(g, (*g.shape[:-1], 1, g.shape[-1]))])
        return G, G.ndim - 3
    if slot == 0 and b.ndim >= 2 and axes[b.id] == b.ndim - 1:  # W @ x with examples as columns
        if a.ndim == 2 and b.ndim == 2:
            return Term(a=swap_last(g), g=swap_last(b))
        if a.ndim == 1:
            G = ew(arg(0) * arg(1), [b, reshape(g, (*g.shape[:-1], 1, g.shape[-1]))])
        else:
            G = ew(arg(0) * arg(1), [reshape(b, (*b.shape[:-2], 1, *b.shape[-2:])),
                                     reshape(g, (*g.shape[:-1], 1, g.shape[-1]))])
        return G, G.ndim - 1
    return None


def use_term(graph, nid: int, slot: int, g: Tensor, axes, batch) -> Term | None:
    """The per-example gradient of input ``slot`` (shared) of the batched node ``nid``, given ``g = ∂L/∂node``."""
    node = graph.nodes[nid]
    ins = [Tensor(graph, i) for i in node.inputs]
    shared = ins[slot]
    if node.op == "matmul":
        found = _matmul_term(slot, g, *ins, axes)
        if isinstance(found, Term):
            return found
        if found is not None:
            return Term(full=keep_batch(*found, shared.shape, batch))
    if node.op not in ("ew", "matmul", "broadcast_to"):
        raise GraphError(f"{WHO}: cannot split the gradient of {shared.node.label} per example through "
                         f"{node.op} {node.label}")
    G = OPS[node.op].vjp(Tensor(graph, nid), g, *ins, **dict(node.attrs))[slot]
    if G is None:
        return None
    return Term(full=keep_batch(G, axes[nid], shared.shape, batch, aligned=True))


# -- through shared nodes (e.g. W = v / |v|): every rule takes and gives (m, *shape) gradients ------------
def _shared_ew(out, P, ins, batch, expr):
    grads = OPS["ew"].vjp(out, P, *ins, expr=expr)  # broadcasting puts P's batch axis in front
    return [None if G is None else keep_batch(G, 0, x.shape, batch) for G, x in zip(grads, ins)]


def _shared_matmul(out, P, ins, batch):
    a, b = ins
    if a.ndim < 2 or b.ndim < 2:
        raise GraphError(f"{WHO}: per-example gradients through a matrix-vector product of shared tensors "
                         f"({out.node.label}) are not supported")
    return [keep_batch(matmul(P, swap_last(b)), 0, a.shape, batch),
            keep_batch(matmul(swap_last(a), P), 0, b.shape, batch)]


def _shared_sum(out, P, ins, batch, axes, keepdims):
    (x,) = ins
    kept = reshape(P, (batch, *reduced_shape(x.shape, axes, True)))
    return [broadcast_to(kept, (batch, *x.shape))]


SHARED_RULES = {
    "ew": _shared_ew,
    "matmul": _shared_matmul,
    "sum": _shared_sum,
    "broadcast_to": lambda out, P, ins, batch, shape: [keep_batch(P, 0, ins[0].shape, batch)],
    "reshape": lambda out, P, ins, batch, shape: [reshape(P, (batch, *ins[0].shape))],
    "transpose": lambda out, P, ins, batch, perm: [
        transpose(P, (0, *(int(i) + 1 for i in np.argsort(perm))))],
}


# -- the driver --------------------------------------------------------------------------------------------
def _check_wrt(graph, wrt, axes):
    for w in wrt:
        if not isinstance(w, Tensor) or w.graph is not graph:
            raise GraphError(f"{WHO}: wrt must be tensors of graph {graph.name!r}")
        if not is_float(w.dtype):
            raise GraphError(f"{WHO}: cannot differentiate w.r.t. {w.node.label} of dtype {w.dtype}")
        if axes.get(w.id) is not None:
            raise GraphError(f"{WHO}: {w.node.label} varies per example; per-example gradients are taken "
                             "w.r.t. tensors shared by all examples (params)")


def _shared_uses(graph, relevant, axes) -> list[tuple[int, int, int]]:
    """(node, slot, input) where a per-example node reads a shared float tensor on the way to the params."""
    uses = []
    for nid in graph.order(relevant):
        node = graph.nodes[nid]
        if axes[nid] is None or OPS[node.op].vjp is None or not is_float(node.dtype):
            continue
        uses.extend((nid, slot, src) for slot, src in enumerate(node.inputs)
                    if src in relevant and axes[src] is None and is_float(graph.nodes[src].dtype))
    return uses


def per_example_terms(losses: Tensor, wrt: list[Tensor]):
    """(batch dim, [list of Terms per wrt tensor]) — the per-example gradients before they are materialized."""
    graph = losses.graph
    batch = _batch_dim(losses)
    axes = batch_axes(graph, losses.id, batch)
    if axes[losses.id] != 0:
        raise GraphError(f"{WHO}: losses {losses.node.label} do not vary per example")
    _check_wrt(graph, wrt, axes)
    reach = set()
    for w in wrt:
        reach |= {w.id} | nx.descendants(graph.nx, w.id)
    relevant = reach & set(axes)
    uses = _shared_uses(graph, relevant, axes)
    terms: dict[int, list[Term]] = {}
    if uses:
        users = sorted({nid for nid, _, _ in uses})
        with graph.in_phase("backward"):
            seed = fill(graph, 1, (batch,), losses.dtype)
        gs = dict(zip(users, grad(losses, [Tensor(graph, n) for n in users], seed=seed)))
        with graph.in_phase("backward"):
            for nid, slot, src in uses:
                term = use_term(graph, nid, slot, gs[nid], axes, batch)
                if term is not None:
                    terms.setdefault(src, []).append(term)
            _through_shared(graph, terms, relevant, axes, batch)
    return batch, [terms.get(w.id, []) for w in wrt]


def _through_shared(graph, terms, relevant, axes, batch):
    """Carry the per-example gradients of shared nodes back to the shared tensors they are computed from."""
    for nid in sorted(relevant, reverse=True):
        node = graph.nodes[nid]
        if axes[nid] is not None or nid not in terms or not node.inputs:
            continue
        slots = [k for k, src in enumerate(node.inputs) if src in relevant and is_float(graph.nodes[src].dtype)]
        if not slots or OPS[node.op].vjp is None:
            continue
        if node.op not in SHARED_RULES:
            raise GraphError(f"{WHO}: cannot carry per-example gradients through {node.op} {node.label} "
                             "(computed from the parameters alone)")
        P = add_terms(terms[nid], batch)
        terms[nid] = [Term(full=P)]
        ins = [Tensor(graph, i) for i in node.inputs]
        grads = SHARED_RULES[node.op](Tensor(graph, nid), P, ins, batch, **dict(node.attrs))
        for k in slots:
            if grads[k] is not None:
                terms.setdefault(node.inputs[k], []).append(Term(full=grads[k]))


def add_terms(terms: list[Term], batch) -> Tensor:
    parts = [t.materialize(batch) for t in terms]
    return parts[0] if len(parts) == 1 else ew(sympy.Add(*(arg(i) for i in range(len(parts)))), parts, "add")


def _cleanup(graph, first: int, keep: list[Tensor]) -> None:
    """Drop the nodes built since id ``first`` that ``keep`` does not need (unused VJP branches)."""
    made = {i for i in range(first, graph._next_id) if i in graph.nodes}
    used = graph.needed(t.id for t in keep) | set(graph.outputs.values())
    for r in graph.grads:
        used |= set(r.nodes) | set(r.results)
    graph.remove(sorted(made - used, reverse=True))


def _targets(wrt):
    single = isinstance(wrt, Tensor)
    return single, [wrt] if single else list(wrt)


def per_example_grads(losses: Tensor, wrt):
    """Gradients of each example's loss: ``(m, *p.shape)`` for each ``p`` in ``wrt`` (a tensor or a list).

    ``losses`` is the vector ``(m,)`` of per-example losses (batch axis first, before any mean). The result
    is built as ordinary graph nodes (for ``x @ W`` the outer products ``x[i] ⊗ dz[i]``), about the cost of
    one backward pass. Raises GraphError naming the op when one example's loss depends on another's.
    """
    single, targets = _targets(wrt)
    graph, first = losses.graph, losses.graph._next_id
    batch, terms = per_example_terms(losses, targets)
    out = []
    with graph.in_phase("backward"):
        for w, ts in zip(targets, terms):
            t = add_terms(ts, batch) if ts else fill(graph, 0, (batch, *w.shape), w.dtype)
            if w.name and not t.name:
                t.named(f"d{w.name}_per_example")
            out.append(t)
    _cleanup(graph, first, out)
    return out[0] if single else out


def _sq_norms(terms: list[Term], batch, dtype) -> Tensor:
    """``|Σ terms|²`` per example, ``(m,)``; outer terms via ``(a_s·a_t)(g_s·g_t)`` (no (m, k, c) array)."""
    if all(t.full is None for t in terms):
        parts = []
        for s, ts in enumerate(terms):
            for t, tt in enumerate(terms[s:], start=s):
                dot_a = reduce_sum(ew(arg(0) * arg(1), [ts.a, tt.a]), 1)
                dot_g = reduce_sum(ew(arg(0) * arg(1), [ts.g, tt.g]), 1)
                parts.append(ew((1 if s == t else 2) * arg(0) * arg(1), [dot_a, dot_g]))
        return add_terms([Term(full=p) for p in parts], batch)
    P = add_terms(terms, batch)
    return reduce_sum(ew(arg(0) ** 2, [P]), tuple(range(1, P.ndim)))


def per_example_norms(losses: Tensor, wrt, terms=None) -> Tensor:
    """The norm of each example's gradient over all of ``wrt`` jointly, ``(m,)``."""
    _, targets = _targets(wrt)
    graph, first = losses.graph, losses.graph._next_id
    batch, terms = per_example_terms(losses, targets) if terms is None else terms
    with graph.in_phase("backward"):
        sq = [_sq_norms(ts, batch, losses.dtype) for ts in terms if ts]
        total = add_terms([Term(full=s) for s in sq], batch) if sq else fill(graph, 0, (batch,), losses.dtype)
        norms = ew(sympy.sqrt(arg(0)), [total], "per-example norm")
    _cleanup(graph, first, [norms])
    return norms


def _weighted_sum(terms: list[Term], weight: Tensor, batch, shape) -> Tensor:
    """``Σ_i weight[i] · (Σ terms)[i]``: outer terms as one matmul ``aᵀ (weight·g)`` each."""
    parts = []
    w_col = reshape(weight, (batch, 1))
    for t in terms:
        if t.full is None:
            parts.append(matmul(swap_last(t.a), ew(arg(0) * arg(1), [w_col, t.g])))
        else:
            w = reshape(weight, (batch, *(1,) * len(shape)))
            parts.append(reduce_sum(ew(arg(0) * arg(1), [w, t.full]), 0))
    return add_terms([Term(full=p) for p in parts], batch)


def clipped_mean_grads(losses: Tensor, wrt, clip: float, noise=None, noise_multiplier: float = 0.0):
    """DP-SGD's gradient: the batch mean of the per-example gradients, each clipped to norm ``clip``.

    Example ``i``'s gradient (over all of ``wrt`` jointly) is scaled by ``1 / max(1, |g_i| / clip)``. With
    ``noise`` (one tensor per ``wrt`` of standard normal draws, e.g. fed each step), ``noise_multiplier · clip ·
    noise / m`` is added: the Gaussian mechanism of DP-SGD. Dense layers never build their (m, k, c) arrays.
    """
    single, targets = _targets(wrt)
    if not (isinstance(clip, (int, float)) and clip > 0):
        raise GraphError(f"clipped_mean_grads: clip must be a positive number, not {clip!r}")
    graph, first = losses.graph, losses.graph._next_id
    batch, terms = per_example_terms(losses, targets)
    noises = _check_noise(noise, targets, noise_multiplier)
    norms = per_example_norms(losses, targets, terms=(batch, terms))
    with graph.in_phase("backward"):
        c = scalar(clip)
        weight = ew(1 / (batch * Maximum(1, arg(0) / c)), [norms], "clip weight", name="clip_weight")
        out = []
        for w, ts, xi in zip(targets, terms, noises):
            mean = _weighted_sum(ts, weight, batch, w.shape) if ts else fill(graph, 0, w.shape, w.dtype)
            if xi is not None:
                mean = ew(arg(0) + scalar(noise_multiplier) * c * arg(1) / batch, [mean, xi], "noise")
            if w.name and not mean.name:
                mean.named(f"d{w.name}_clipped")
            out.append(mean)
    _cleanup(graph, first, out)
    return out[0] if single else out


def _check_noise(noise, targets, multiplier):
    if noise is None:
        return [None] * len(targets)
    noise = [noise] if isinstance(noise, Tensor) else list(noise)
    if len(noise) != len(targets):
        raise GraphError(f"clipped_mean_grads: noise needs one tensor per wrt tensor ({len(targets)}), "
                         f"got {len(noise)}")
    for xi, w in zip(noise, targets):
        if not isinstance(xi, Tensor) or not shapes.same(xi.shape, w.shape):
            raise GraphError(f"clipped_mean_grads: noise for {w.node.label} must be a tensor of its shape")
    if not multiplier:
        raise GraphError("clipped_mean_grads: noise given with noise_multiplier 0")
    return noise


def losses_of_mean(loss: Tensor) -> Tensor:
    """The per-example losses ``l`` of a loss written ``gc.mean(l)``; a GraphError otherwise."""
    graph, node = loss.graph, loss.node
    if node.op == "ew" and len(node.inputs) == 1:
        total = graph.nodes[node.inputs[0]]
        if total.op == "sum" and len(total.inputs) == 1 and total.attr("axes") == (0,):
            losses = Tensor(graph, total.inputs[0])
            if losses.ndim == 1 and _same(node.attr("expr"), arg(0) / losses.shape[0]):
                return losses
    raise GraphError(f"per-example clipping needs the loss {node.label} to be gc.mean(losses) of a vector of "
                     "per-example losses (m,), e.g. gc.mean(gc.softmax_cross_entropy(logits, labels))")


def dp_sgd_gradients(loss: Tensor, params: list[Tensor], clip: float, noise: float, seed: int) -> list[Tensor]:
    """DP-SGD's gradients for the loss ``gc.mean(losses)``: clipped per example, averaged, with noise."""
    losses = losses_of_mean(loss)
    xi = None
    if noise:
        with loss.graph.in_phase("backward"):
            xi = [random_normal(loss.graph, p.shape, p.dtype, seed, k) for k, p in enumerate(params)]
        for x, p in zip(xi, params):
            if p.name:
                x.named(f"noise_{p.name}")
    return clipped_mean_grads(losses, params, clip, noise=xi, noise_multiplier=noise)
