"""Every mistake a user can make while building or feeding a graph: a GraphError that names what is wrong."""
import numpy as np
import pytest

import graphc as gc

m = gc.dim("m")


def raises(match):
    return pytest.raises(gc.GraphError, match=match)


def test_matmul_inner_dim_mismatch_names_tensors_and_shapes():
    with gc.Graph("bad"):
        x = gc.input("x", (m, 784))
        W1 = gc.param("W1", (785, 128))
        with raises(r"matmul: inner dims differ: 784 .*'x' \(m, 784\).* 785 .*'W1' \(785, 128\)"):
            x @ W1


def test_broadcast_failure_names_op_and_shapes():
    with gc.Graph("bad"):
        x = gc.input("x", (m, 3))
        b = gc.param("b", (4,))
        with raises(r"add: cannot broadcast 'x' \(m, 3\) and 'b' \(4,\)"):
            x + b


@pytest.mark.parametrize("call", [lambda x: gc.sum(x, axis=2), lambda x: gc.softmax(x, axis=-3),
                                  lambda x: gc.mean(x, axis=(0, 0)), lambda x: gc.max(x, axis=1.0),
                                  lambda x: gc.sum(x, axis=True)])
def test_bad_axis(call):
    with gc.Graph("bad"):
        x = gc.input("x", (m, 3))
        with raises(r"axis .* is not an axis of a 2-d tensor \(distinct ints from -2 to 1\).*'x' \(m, 3\)"):
            call(x)


def test_an_axis_may_be_a_numpy_integer():
    with gc.Graph("numpy_axis") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        g.output(s=gc.sum(x, axis=np.int64(1)), sm=gc.softmax(x, axis=np.int32(-1)))
    X = np.arange(6.0).reshape(2, 3)
    got = gc.compile(g)({"x": X})
    np.testing.assert_allclose(got["s"], X.sum(axis=1))
    np.testing.assert_allclose(got["sm"], np.exp(X) / np.exp(X).sum(axis=1, keepdims=True))


def test_reshape_element_count():
    with gc.Graph("bad"):
        x = gc.input("x", (m, 6))
        with raises(r"reshape: cannot reshape \(m, 6\) to \(m, 4\)"):
            gc.reshape(x, (m, 4))


def test_softmax_cross_entropy_label_shape():
    with gc.Graph("bad"):
        z = gc.input("z", (m, 10))
        t = gc.input("t", (m, 1), dtype="int64")
        with raises(r"softmax_cross_entropy: integer labels must have shape \(m,\).*'z' \(m, 10\), 't' \(m, 1\)"):
            gc.softmax_cross_entropy(z, t)


def test_grad_of_non_scalar_explains_both_remedies():
    with gc.Graph("bad"):
        y = gc.input("y", (m, 3))
        t = gc.input("t", (m, 3))
        sq = ((y - t) ** 2).named("sq_err")
        with pytest.raises(gc.GraphError) as info:
            gc.grad(sq, [y])
    msg = str(info.value)
    assert "'sq_err'" in msg and "(m, 3)" in msg and "scalar" in msg
    assert "gc.mean" in msg and "gc.sum" in msg and "seed=" in msg


def test_duplicate_names():
    with gc.Graph("bad"):
        gc.input("x", (m, 3))
        with raises("declared twice"):
            gc.param("x", (3,))


def test_tensor_from_another_graph():
    with gc.Graph("a"):
        x = gc.input("x", (m, 3))
    with gc.Graph("b"):
        w = gc.param("w", (3,))
        with raises(r"different graphs.*'x' \(m, 3\) of graph 'a'.*'w' \(3,\) of graph 'b'"):
            x * w
        with raises(r"grad: 'x' \(m, 3\) belongs to graph 'a'"):
            gc.grad(gc.sum(w), [x])


def test_declarations_outside_a_graph():
    with raises(r"gc.input must be called inside `with gc.Graph"):
        gc.input("x", (3,))


def test_param_needs_concrete_shape_and_known_init():
    with gc.Graph("bad"):
        with raises(r"param 'W': shape \(m, 3\) must be concrete"):
            gc.param("W", (m, 3))
        with raises(r"param 'V': unknown init 'kaiming'"):
            gc.param("V", (3,), init="kaiming")


def test_truth_value_of_a_tensor():
    with gc.Graph("bad"):
        x = gc.input("x", (m,))
        with raises("no truth value"):
            if x > 0:
                pass


def _graph():
    with gc.Graph("net") as g:
        x = gc.input("x", (m, 3))
        t = gc.input("t", (m,), dtype="int64")
        W = gc.param("W", (3, 2))
        g.output(loss=gc.mean(gc.softmax_cross_entropy(x @ W, t)))
    return g


def test_feed_errors_name_the_input_and_expected_shape():
    g = _graph()
    W = np.zeros((3, 2), np.float32)
    x, t = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    with raises(r"needs feeds for \['t'\]: input 't' \(m,\)"):
        g.evaluate({"x": x, "W": W})
    with raises(r"feeds \['y'\] are not inputs, params or state"):
        g.evaluate({"x": x, "t": t, "W": W, "y": x})
    with raises(r"input 't' expects shape \(m,\), got \(5,\) \(with m=4\)"):
        g.evaluate({"x": x, "t": np.zeros(5, np.int64), "W": W})
    with raises(r"input 'x' expects float32, got float64"):
        g.evaluate({"x": x.astype(np.float64), "t": t, "W": W})
    with raises(r"param 'W' expects shape \(3, 2\), got \(2, 3\)"):
        g.evaluate({"x": x, "t": t, "W": W.T})


def test_symbolic_dims_bind_through_expressions():
    with gc.Graph("img") as g:
        x = gc.input("x", (m, 28 * 28))
        flat = gc.input("flat", (m * 28,))
        g.output(y=gc.sum(x) + gc.sum(flat))
    g.evaluate({"x": np.ones((2, 784), np.float32), "flat": np.ones(56, np.float32)})
    with raises(r"input 'flat' expects shape \(28\*m,\), got \(57,\)"):
        g.evaluate({"x": np.ones((2, 784), np.float32), "flat": np.ones(57, np.float32)})


def test_a_training_step_without_its_state_says_so(tmp_path):
    """Adam keeps state: a train_step given none, or a save without it, names the state and how to get it (the
    message spoke of 'feeds')."""
    m = gc.dim("m")
    with gc.Graph("adam_state") as g:
        x, t = gc.input("x", (m, 4)), gc.input("t", (m,), dtype="int64")
        g.output(loss=gc.mean(gc.softmax_cross_entropy(x @ gc.param("W", (4, 3)), t)))
    prog = gc.compile(g, loss="loss", optimizer=gc.Adam(0.01))
    params, batch = prog.init_params(0), {"x": np.ones((2, 4), np.float32), "t": np.array([0, 1])}
    with pytest.raises(ValueError, match=r"state must be a dict .* expected step, m_W, v_W \(state = init_state"):
        prog.train_step(params, batch, None)
    with pytest.raises(ValueError, match=r"missing state \['step', 'm_W', 'v_W'\]"):
        prog.module.save(tmp_path / "unused.npz", params)


def test_compiling_a_training_step_for_a_loss_that_is_not_a_scalar():
    """The reason and the remedy, as gc.grad says them (it showed the internal seed node)."""
    m = gc.dim("m")
    with gc.Graph("vector_loss") as g:
        g.output(loss=gc.input("x", (m, 4)) @ gc.param("W", (4, 3)))
    with pytest.raises(gc.GraphError, match=r"training: output 'loss' has shape \(m, 3\), not a scalar.*gc\.mean"):
        gc.compile(g, loss="loss", optimizer=gc.SGD(0.1))


@pytest.mark.parametrize("kind", ["param", "input"])
def test_a_tensor_named_like_the_step_counter(kind):
    """Adam counts steps in the state entry 'step': a tensor of the user's of that name is refused when the training
    step is built (the file raised NameError, or spoke of the user's input as the counter)."""
    with gc.Graph("named_step") as g:
        x, t = gc.input("x", (m, 4)), gc.input("t", (m,), dtype="int64")
        w = gc.param("step", (4, 3)) if kind == "param" else gc.param("W", (4, 3))
        extra = gc.input("step", (m, 3)) if kind == "input" else 0
        g.output(loss=gc.mean(gc.softmax_cross_entropy(x @ w + extra, t)))
    with raises(r"Adam\(.*\) counts training steps in the state entry 'step', but graph 'named_step' already has"):
        gc.compile(g, loss="loss", optimizer=gc.Adam(0.01))
    gc.compile(g, loss="loss", optimizer=gc.SGD(0.1))  # plain SGD counts no steps: the name is free


@pytest.mark.parametrize("k", [4.0, 2.5, -2, 0, True, "3"])
def test_one_hot_needs_a_positive_count_of_classes(k):
    with gc.Graph("one_hot_k"):
        t = gc.input("t", (m,), dtype="int64")
        with raises(r"one_hot: k \(the number of classes\) must be a positive int or dim"):
            gc.one_hot(t, k)


@pytest.mark.parametrize("call,message", [
    (lambda x: gc.concat([x, np.zeros((1, 4), np.float32)]), r"concat: operands must be tensors of the graph, not "
                                                                r"ndarray"),
    (lambda x: gc.sum(np.ones(3)), r"sum: x must be a tensor of the graph, not ndarray"),
    (lambda x: gc.reshape([1, 2], (2,)), r"reshape: x must be a tensor of the graph, not list"),
    (lambda x: gc.broadcast_to(1.0, (m, 4)), r"broadcast_to: x must be a tensor of the graph, not float"),
    (lambda x: gc.grad(1.0, [x]), r"grad: y must be a tensor of the graph, not float"),
    (lambda x: gc.layer_norm(x, gamma=np.ones(4, np.float32)), r"layer_norm: gamma must be a tensor of the graph"),
    (lambda x: gc.softmax_cross_entropy(np.ones((2, 3)), x), r"softmax_cross_entropy: logits must be a tensor"),
])
def test_an_array_where_a_tensor_is_declared_is_refused_by_name(call, message):
    """It failed deep inside on a missing attribute, or on NumPy's 'truth value of an array is ambiguous'."""
    with gc.Graph("arrays"):
        x = gc.input("x", (m, 4))
        with raises(message + r".*gc\.const holds a fixed array"):
            call(x)


@pytest.mark.parametrize("index,message", [
    (lambda x: x[:, ::1.5], r"step 1\.5 on axis 1 is not an int"),
    (lambda x: x[:, 1.5:], r"start 1\.5 on axis 1 is not an int or a dim"),
    (lambda x: x[::m], r"step m on axis 0 is not an int"),
    (lambda x: x[:, True:], r"start True on axis 1 is not an int or a dim"),
])
def test_a_slice_bound_that_is_not_an_int(index, message):
    """NumPy refuses float bounds; they were truncated (x[:, ::1.5] was x) or raised sympy's TypeError."""
    with gc.Graph("float_slices"):
        x = gc.input("x", (m, 4))
        with raises(r"slice: " + message):
            index(x)
        assert x[:, np.int64(1):].shape[1] == 3 and x[: m - 1].shape[0] == m - 1  # NumPy ints and dims are bounds


def test_a_read_only_param_is_refused_before_any_array_is_written():
    """A memory-mapped checkpoint's params are read-only: Adam's step wrote m and v, then failed on W (half a
    step); now nothing is written."""
    with gc.Graph("read_only") as g:
        x, t = gc.input("x", (m, 4)), gc.input("t", (m,), dtype="int64")
        g.output(loss=gc.mean(gc.softmax_cross_entropy(x @ gc.param("W", (4, 3)), t)))
    prog = gc.compile(g, loss="loss", optimizer=gc.Adam(0.01))
    params = prog.init_params(0)
    state = prog.init_state(params)
    params["W"].flags.writeable = False
    with pytest.raises(ValueError, match=r"param W is read-only, and the step updates it in place"):
        prog.train_step(params, {"x": np.ones((2, 4), np.float32), "t": np.array([0, 1])}, state)
    assert int(state["step"]) == 0 and not state["m_W"].any() and not state["v_W"].any()


@pytest.mark.parametrize("call,message", [
    (lambda x: gc.std(x, axis=1, ddof=1), r"var: ddof=1 is not below the 1 elements it reduces"),
    (lambda x: gc.var(x, ddof="1"), r"var: ddof must be a non-negative int, not '1'"),
    (lambda x: gc.var(x, axis=1, ddof=-1), r"var: ddof must be a non-negative int, not -1"),
])
def test_a_variance_without_degrees_of_freedom(call, message):
    """It raised sympy's KeyError('ComplexInfinity') at compile."""
    with gc.Graph("ddof"):
        x = gc.input("x", (m, 1))
        with raises(message):
            call(x)


def test_a_dim_named_like_grad_steps_argument_refuses_grad_step_only():
    """A dim 'm_total' made the file a SyntaxError (a duplicate argument); now grad_step alone is refused, saying
    why, and the training step works."""
    total = gc.dim("m_total")
    with gc.Graph("named_m_total") as g:
        x, t = gc.input("x", (total, 4)), gc.input("t", (total,), dtype="int64")
        g.output(loss=gc.mean(gc.softmax_cross_entropy(x @ gc.param("W", (4, 3)), t)))
    prog = gc.compile(g, loss="loss")
    params, batch = prog.init_params(0), {"x": np.ones((2, 4), np.float32), "t": np.array([0, 1])}
    np.testing.assert_allclose(prog.train_step(params, batch)["loss"], np.log(3), rtol=1e-6)
    with raises(r"grad_step: graph 'named_m_total' names a dim or tensor 'm_total'"):
        prog.grad_step(params, batch, 2)


@pytest.mark.parametrize("lr", [None, "fast", np.array([0.1, 0.2])])
def test_a_learning_rate_that_is_not_a_number(lr):
    """It failed in a generated statement (unary minus of None, a cast of object dtype, a broadcast)."""
    with gc.Graph("bad_lr") as g:
        x, t = gc.input("x", (m, 4)), gc.input("t", (m,), dtype="int64")
        g.output(loss=gc.mean(gc.softmax_cross_entropy(x @ gc.param("W", (4, 3)), t)))
    prog = gc.compile(g, loss="loss")
    with pytest.raises(TypeError, match=r"lr must be a real number, not"):
        prog.train_step(prog.init_params(0), {"x": np.ones((2, 4), np.float32), "t": np.array([0, 1])}, lr=lr)


@pytest.mark.parametrize("call,message", [
    (lambda: gc.dim(3), r"dim name 3 must be a Python identifier"),
    (lambda: gc.Graph(None), r"graph name None must be a Python identifier"),
])
def test_a_name_that_is_not_a_string(call, message):
    with raises(message):
        call()


@pytest.mark.parametrize("call,message", [
    (lambda: gc.const([1.0], dtype="float16"), r"gc.const: unsupported dtype 'float16'"),
    (lambda: gc.const([[1, 2], [3]]), r"gc.const: \[\[1, 2\], \[3\]\] is not an array"),
])
def test_a_constant_that_cannot_be_held(call, message):
    with gc.Graph("constants"):
        with raises(message):
            call()
