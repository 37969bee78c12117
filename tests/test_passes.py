"""Every optimization pass: its pattern is gone afterwards, and the numbers are unchanged (≤ 1e-10)."""
import numpy as np
import pytest
import sympy

import graphc as gc
from graphc.cli.explain import measure, random_feeds
from graphc.optim import training_graph
from graphc.passes import PASS_NAMES, optimize
from graphc.transforms.gradcheck import rel_error

from models import MODELS, feeds_with_params

m = gc.dim("m")


def ops(graph):
    return [n.op for n in graph.nodes.values()]


def assert_same_numbers(before, after, feeds):
    expected, got = before.evaluate(feeds), after.evaluate(feeds)
    for name in expected:
        assert rel_error(got[name], expected[name]) <= 1e-10, name


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("backend", ["numpy", "cupy"])
def test_every_pass_keeps_outputs_and_gradients(name, backend):
    g, feeds = MODELS[name]()
    feeds = feeds_with_params(g, feeds)
    _, records = optimize(g, 2, backend=backend)
    other = {"numpy": "rowwise_softmax_xent", "cupy": "expand_softmax_xent"}[backend]  # the pass run in its place
    assert {r.name for r in records} == set(PASS_NAMES) - {other}
    for r in records:
        assert_same_numbers(g, r.graph, feeds)


def hand_written_xent():
    with gc.Graph("hand") as g:
        z = gc.input("z", (m, 5), dtype="float64")
        t = gc.input("t", (m,), dtype="int64")
        losses = -gc.sum(gc.one_hot(t, 5, "float64") * gc.log(gc.softmax(z)), axis=-1)
        loss = gc.mean(losses)
        g.output(loss=loss, dz=gc.grad(loss, z))
    return g


def test_softmax_xent_fusion_of_the_hand_written_form():
    g = hand_written_xent()
    optimized, records = optimize(g, 2)
    fused = next(r for r in records if r.name == "fuse_softmax_xent")
    assert "softmax_cross_entropy" in ops(fused.graph)
    assert not any(n.op == "ew" and n.attr("expr") == sympy.log(sympy.Symbol("_0", real=True))
                   for n in optimized.nodes.values())
    assert "softmax_xent_grad" in ops(optimized) and "one_hot" not in ops(optimized)
    rng = np.random.default_rng(0)
    feeds = {"z": rng.normal(size=(6, 5)), "t": rng.integers(0, 5, 6)}
    assert_same_numbers(g, optimized, feeds)


def test_fused_softmax_xent_is_stable_for_huge_logits():
    g = hand_written_xent()
    z = np.array([[1e4, -1e4, 0, 5e3, 1], [-1e4, -1e4, -1e4, -1e4, 1e4]])
    t = np.array([0, 2])
    out = gc.compile(g, opt_level=2)({"z": z, "t": t})
    assert np.isfinite(out["loss"]) and np.isfinite(out["dz"]).all()
    assert rel_error(out["loss"], 1e4) <= 1e-12  # the second row's loss is 2e4, the first's 0
    expected = np.zeros_like(z)
    expected[0, 0], expected[1, 4], expected[1, 2] = 0.0, 0.5, -0.5
    assert rel_error(out["dz"], expected) <= 1e-12


def test_mlp_backward_applies_one_over_m_exactly_once():
    g, _ = MODELS["mlp"]()
    trained, _ = optimize(training_graph(g, "loss", gc.SGD(0.1)), 2)
    uses = []
    for node in trained.nodes.values():
        for key in ("expr", "scale", "value"):
            value = node.attr(key)
            if node.phase != "forward" and isinstance(value, sympy.Basic) and m in value.free_symbols:
                uses.append((node.op, value))
    assert uses == [("softmax_xent_grad", 1 / m)], uses
    assert not any(n.op == "fill" and n.shape for n in trained.nodes.values())  # no array of ones or of 1/m


def test_scale_moves_factors_to_the_smaller_tensor():
    with gc.Graph("reg") as g:
        x, t = gc.input("x", (m, 3), dtype="float64"), gc.input("t", (m, 2), dtype="float64")
        W = gc.param("W", (3, 2), dtype="float64", init=("normal", 0.5))
        loss = gc.mean(gc.sum((x @ W - t) ** 2, axis=1))
        g.output(loss=loss, dW=gc.grad(loss, W))
    optimized, records = optimize(g, 2)
    assert any("smaller result" in note for r in records if r.name == "scale" for note in r.rewrites)
    for node in optimized.nodes.values():  # no big array is scaled by a factor alone
        if node.op == "ew" and len(node.inputs) == 1 and m in node.shape:
            assert node.attr("expr").as_coeff_Mul()[0] == 1, node
    feeds = feeds_with_params(g, {"x": np.ones((4, 3)), "t": np.zeros((4, 2))})
    assert_same_numbers(g, optimized, feeds)


def test_matmul_with_a_constant_operand_becomes_a_sum():
    with gc.Graph("lin") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        W = gc.param("W", (3, 4), dtype="float64", init=("normal", 1.0))
        loss = gc.mean(x @ W)
        g.output(loss=loss, dW=gc.grad(loss, W))
    optimized, _ = optimize(g, 2)
    assert not any(n.op == "fill" and n.shape for n in optimized.nodes.values())
    assert_same_numbers(g, optimized, feeds_with_params(g, {"x": np.arange(12.0).reshape(4, 3)}))


def test_simplify_drops_redundant_shape_ops():
    with gc.Graph("shapes") as g:
        x = gc.input("x", (m, 6), dtype="float64")
        y = gc.reshape(gc.reshape(x, (m, 2, 3)), (m, 3, 2))
        z = gc.transpose(gc.transpose(y, (0, 2, 1)), (0, 2, 1))
        b = gc.broadcast_to(gc.input("b", (2,), dtype="float64"), (m, 3, 2))
        g.output(y=-gc.exp(-(z * b)))
    simplified, _ = optimize(g, 1)
    assert ops(simplified).count("reshape") == 1 and "transpose" not in ops(simplified)
    assert "broadcast_to" not in ops(simplified)
    assert_same_numbers(g, simplified, {"x": np.arange(12.0).reshape(2, 6), "b": np.array([1.0, -2.0])})


def test_fold_constants_leaves_no_fill_in_expressions():
    g, feeds = MODELS["logistic_regression"]()
    optimized, _ = optimize(g, 1)
    for node in optimized.nodes.values():
        assert all(optimized.nodes[i].op != "fill" for i in node.inputs), node


def test_cse_merges_what_differentiation_duplicates():
    with gc.Graph("probs") as g:
        z = gc.input("z", (m, 4), dtype="float64")
        t = gc.input("t", (m,), dtype="int64")
        loss = gc.mean(gc.softmax_cross_entropy(z, t))
        g.output(loss=loss, probs=gc.softmax(z), dz=gc.grad(loss, z))
    optimized, _ = optimize(g, 1)
    assert ops(optimized).count("softmax") == 1


def test_dce_removes_what_no_output_needs():
    with gc.Graph("dead") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        gc.exp(x) * 2  # computed, never used
        g.output(y=gc.tanh(x))
    optimized, records = optimize(g, 1)
    assert "exp" not in str([n.attr("expr") for n in optimized.nodes.values()])
    assert any(r.name == "dce" and r.rewrites for r in records)


def test_elementwise_fusion_is_maximal_and_convex():
    g, feeds = MODELS["tanh_net"]()
    optimized, _ = optimize(g, 2)
    roots = set(optimized.roots())
    for nid, node in optimized.nodes.items():
        users = optimized.consumers(nid)
        if node.op == "ew" and nid not in roots and len(users) == 1:
            user = optimized.nodes[users[0]]
            assert not (user.op == "ew" and user.shape == node.shape), f"{node} could fuse into {user}"
    assert_same_numbers(g, optimized, feeds_with_params(g, feeds))


def test_reduction_fusion():
    g, feeds = MODELS["half_sse"]()
    optimized, _ = optimize(g, 2)
    assert "sum_ew" in ops(optimized)
    for node in optimized.nodes.values():
        if node.op == "sum":
            src = optimized.nodes[node.inputs[0]]
            assert not (src.op == "ew" and len(optimized.consumers(src.id)) == 1)


def test_a_mean_of_every_element_fuses_through_a_reshape_but_a_partial_sum_does_not():
    with gc.Graph("means") as g:
        x = gc.input("x", (m, 3, 2), dtype="float64")
        rows = gc.reshape(gc.exp(x), (m, 6))
        g.output(total=gc.mean(rows), per_row=gc.sum(gc.reshape(gc.tanh(x), (m, 6)), axis=1))
    optimized, _ = optimize(g, 2)
    total = optimized.nodes[optimized.outputs["total"]]
    assert total.op == "sum_ew" and total.attr("axes") == (0, 1, 2) and total.attr("scale") == 1 / (6 * m)
    per_row = optimized.nodes[optimized.outputs["per_row"]]
    assert per_row.op == "sum" and optimized.nodes[per_row.inputs[0]].op == "reshape"
    feeds = {"x": np.random.default_rng(0).normal(size=(4, 3, 2))}
    assert_same_numbers(g, optimized, feeds)


@pytest.mark.parametrize("backend", ["numpy", "cupy"])
def test_a_backend_runs_its_own_pass_in_a_slot_and_the_slots_name_switches_it_off(backend):
    """CuPy's pass takes the slot of expand_softmax_xent: either name switches it off there."""
    g, _ = MODELS["mlp"]()
    names = {r.name for r in optimize(g, 2, backend=backend)[1]}
    assert ("rowwise_softmax_xent" in names) == (backend == "cupy")
    assert ("expand_softmax_xent" in names) == (backend == "numpy")
    for name in ("expand_softmax_xent", "rowwise_softmax_xent")[:2 if backend == "cupy" else 1]:
        assert not {"expand_softmax_xent", "rowwise_softmax_xent"} & {
            r.name for r in optimize(g, 2, disable=[name], backend=backend)[1]}


def test_passes_can_be_switched_off_by_name():
    g, feeds = MODELS["mlp"]()
    optimized, records = optimize(g, 2, disable=["fuse_elementwise", "fuse_reductions"])
    assert not {"fuse_elementwise", "fuse_reductions"} & {r.name for r in records}
    with pytest.raises(gc.GraphError, match="unknown passes"):
        optimize(g, 2, disable=["fuse_everything"])
    prog = gc.compile(g, disable=["fuse_softmax_xent"])
    assert "softmax_xent_grad" not in prog.source


def test_opt_level_2_beats_0_on_the_mlp():
    with gc.Graph("mlp") as g:
        x, t = gc.input("x", (m, 784)), gc.input("t", (m,), dtype="int64")
        W1, b1 = gc.param("W1", (784, 512), init="he_normal"), gc.param("b1", (512,))
        W2, b2 = gc.param("W2", (512, 512), init="he_normal"), gc.param("b2", (512,))
        W3, b3 = gc.param("W3", (512, 10), init="glorot_uniform"), gc.param("b3", (10,))
        h = gc.relu(gc.relu(x @ W1 + b1) @ W2 + b2)
        g.output(loss=gc.mean(gc.softmax_cross_entropy(h @ W3 + b3, t)))
    feeds = random_feeds(g, {m: 64})
    o0, o2 = (measure(gc.compile(g, opt_level=level, loss="loss", optimizer=gc.SGD(0.01)), feeds)
              for level in (0, 2))
    assert o2["statements"] < o0["statements"]
    assert o2["buffers"] < o0["buffers"]
    assert o2["buffer_bytes"] < o0["buffer_bytes"]


def test_simplify_cancels_across_nodes_at_level_1():
    with gc.Graph("cancel") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        y = gc.input("y", (m, 3), dtype="float64")
        negated = -y
        g.output(a=gc.exp(gc.log(x)) * y, b=-negated + 0 * x, c=(y * 1.0) / 1)
    simplified, records = optimize(g, 1)
    exprs = [str(n.attr("expr")) for n in simplified.nodes.values() if n.op == "ew"]
    assert not any("exp" in e or "log" in e for e in exprs), exprs
    assert_same_numbers(g, simplified, {"x": np.full((2, 3), 2.0), "y": np.arange(6.0).reshape(2, 3)})


def new_values(graph, feeds, scalars):
    """The reference value of every update of a training graph (a fused update's by the array it writes)."""
    from graphc.core.evaluate import Evaluator, check_feeds
    env, values = check_feeds(graph, feeds, graph.needed(graph.updates.values()))
    env.update({sympy.Symbol(k, positive=True): v for k, v in scalars.items()})
    values = Evaluator(graph, env).run(sorted(set(graph.updates.values())), values)
    out = {}
    for name, nid in graph.updates.items():
        node = graph.nodes[nid]
        if node.op == "fused_update":
            written = [graph.nodes[node.inputs[slot]].name for slot in node.attr("targets") if slot >= 0]
            out[name] = values[nid][written.index(name)]
        else:
            out[name] = values[nid]
    return out


@pytest.mark.parametrize("optimizer", [gc.Adam(weight_decay=0.1, amsgrad=True, clip_grad_norm=1.0),
                                       gc.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01)])
def test_fuse_updates_writes_each_param_and_its_state_in_one_node(optimizer):
    g, feeds = MODELS["mlp"]()
    unfused, _ = optimize(training_graph(g, "loss", optimizer), 2, disable=("fuse_updates",))
    fused, _ = optimize(training_graph(g, "loss", optimizer), 2)
    nodes = [n for n in fused.nodes.values() if n.op == "fused_update"]
    assert len(nodes) == len(g.params) and set(fused.updates.values()) == {n.id for n in nodes}
    rng = np.random.default_rng(0)
    feeds = {**feeds_with_params(g, feeds), **{k: rng.random(fused.nodes[i].shape) for k, i in fused.state.items()}}
    scalars = {"lr": 0.01, "step_size": 0.02, "eps_hat": 1e-8}
    expected, got = new_values(unfused, feeds, scalars), new_values(fused, feeds, scalars)
    assert set(got) == set(expected) == set(fused.updates)
    for name in expected:
        assert rel_error(got[name], expected[name]) <= 1e-12, name
