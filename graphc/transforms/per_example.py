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

import networkx as nx
import sympy

from graphc.core import shapes
from graphc.core.dtypes import is_float
from graphc.core.errors import GraphError
from graphc.core.interpret import Interpreter
from graphc.core.registry import OPS
from graphc.dsl import Tensor, fill
from graphc.ops.batching import WHO, Term, same_dim
from graphc.ops.elementwise import add_all, arg, ew, scalar
from graphc.ops.functions import Maximum
from graphc.ops.linalg import matmul
from graphc.ops.random import noise as random_noise
from graphc.ops.reduce import reduce_sum
from graphc.ops.shape import reshape, swap_last
from graphc.transforms.autodiff import grad


# -- where the batch axis is: one pass over the ops between the batched inputs and the losses ------------
class BatchAxes(Interpreter):
    """Each node's value is the axis holding the examples (None: shared by all examples), by the ops' rules."""

    def __init__(self, graph, batch):
        super().__init__(graph)
        self.batch = batch

    def value(self, node, axes):
        op = OPS[node.op]
        if not node.inputs:
            return _source_axis(node, self.batch)
        ins = [self.graph.nodes[i] for i in node.inputs]
        if all(a is None for a in axes):
            return op.batch_copies(node, ins, self.batch) if op.batch_copies else None
        if op.batch_axis is None:
            raise GraphError(f"{WHO}: cannot tell whether {node.op} {node.label} keeps the examples apart")
        return op.batch_axis(node, ins, axes)


def _source_axis(node, batch):
    if node.op != "input":
        return None  # params, constants and fills are shared by every example
    if node.shape and same_dim(node.shape[0], batch):
        return 0
    if any(same_dim(d, batch) for d in node.shape):
        raise GraphError(f"{WHO}: input {node.label} has the batch dim {batch} on another axis than the first")
    return None


def batch_axes(graph, loss: int, batch) -> dict[int, int | None]:
    """node id -> the axis holding the examples (None: shared by all), for ``loss`` and its ancestors."""
    return BatchAxes(graph, batch).run([loss])


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
    if not any(same_dim(d, batch) for d in firsts):
        symbolic = [d for d in firsts if not d.is_number]
        if len(symbolic) == 1:  # walk with the inputs' batch dim, to name the op that lost it
            batch_axes(graph, losses.id, symbolic[0])
        raise GraphError(f"{WHO}: losses {losses.node.label} do not run over the batch: no input they depend "
                         f"on has {batch} as its first dim")
    return batch


def materialize(term: Term, batch) -> Tensor:
    """A term as one (m, *shape) tensor; outer terms as the rows' outer products."""
    if term.full is not None:
        return term.full
    a, g = term.a, term.g
    return ew(arg(0) * arg(1), [reshape(a, (batch, a.shape[1], 1)), reshape(g, (batch, 1, g.shape[1]))],
              "per-example outer product")


def use_term(graph, nid: int, slot: int, g: Tensor, axes, batch) -> Term | None:
    """The per-example gradient of input ``slot`` (shared) of the batched node ``nid``, given ``g = ∂L/∂node``."""
    node = graph.nodes[nid]
    rule = OPS[node.op].example_grad
    if rule is None:
        raise GraphError(f"{WHO}: cannot split the gradient of {graph.nodes[node.inputs[slot]].label} per example "
                         f"through {node.op} {node.label}")
    return rule(node, slot, g, [Tensor(graph, i) for i in node.inputs], axes, batch)


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
        rule = OPS[node.op].shared_grad
        if rule is None:
            raise GraphError(f"{WHO}: cannot carry per-example gradients through {node.op} {node.label} "
                             "(computed from the parameters alone)")
        P = add_terms(terms[nid], batch)
        terms[nid] = [Term(full=P)]
        ins = [Tensor(graph, i) for i in node.inputs]
        grads = rule(Tensor(graph, nid), P, ins, batch, **dict(node.attrs))
        for k in slots:
            if grads[k] is not None:
                terms.setdefault(node.inputs[k], []).append(Term(full=grads[k]))


def add_terms(terms: list[Term], batch) -> Tensor:
    return add_all([materialize(t, batch) for t in terms])


def _cleanup(graph, first: int, keep: list[Tensor]) -> None:
    """Drop the nodes built since mark ``first`` that ``keep`` does not need (unused VJP branches)."""
    made = graph.added_since(first)
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
    graph, first = losses.graph, losses.graph.mark()
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
    graph, first = losses.graph, losses.graph.mark()
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
    graph, first = losses.graph, losses.graph.mark()
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
            if losses.ndim == 1 and same_dim(node.attr("expr"), arg(0) / losses.shape[0]):
                return losses
    raise GraphError(f"per-example clipping needs the loss {node.label} to be gc.mean(losses) of a vector of "
                     "per-example losses (m,), e.g. gc.mean(gc.softmax_cross_entropy(logits, labels))")


def dp_sgd_gradients(loss: Tensor, params: list[Tensor], clip: float, noise: float, seed: int) -> list[Tensor]:
    """DP-SGD's gradients for the loss ``gc.mean(losses)``: clipped per example, averaged, with noise."""
    losses = losses_of_mean(loss)
    xi = None
    if noise:
        with loss.graph.in_phase("backward"):
            xi = [random_noise(loss.graph, p.shape, p.dtype, seed) for p in params]
        for x, p in zip(xi, params):
            if p.name:
                x.named(f"noise_{p.name}")
    return clipped_mean_grads(losses, params, clip, noise=xi, noise_multiplier=noise)
