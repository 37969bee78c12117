"""Graphs a differential test against PyTorch found wrong or crashing at -O2, and misuse of a generated module:
each as its minimal reproduction, compared with the reference evaluator (itself checked against finite
differences elsewhere) or, where an error is right, with the error a user should see."""
import subprocess
import sys
import threading

import numpy as np
import pytest
import sympy

import graphc as gc
from graphc.transforms.gradcheck import fd_grads, rel_error

from helpers import m

LEVELS = (0, 1, 2)
RNG = np.random.default_rng(0)


def assert_every_level_matches(g, feeds, tol=1e-10):
    want = g.evaluate(feeds)
    for level in LEVELS:
        got = gc.compile(g, opt_level=level)(feeds)
        for k in want:
            assert rel_error(got[k], want[k]) <= tol, (level, k)
    return want


# 1 -- softmax cross-entropy with integer labels on logits that are not 2-d -------------------------------
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_sequence_logits_mean_loss(batch):
    with gc.Graph("seq") as g:
        z, t = gc.input("z", (m, 3, 4), dtype="float64"), gc.input("t", (m, 3), dtype="int64")
        loss = gc.mean(gc.softmax_cross_entropy(z, t))
        g.output(loss=loss, dz=gc.grad(loss, z))
    feeds = {"z": RNG.normal(size=(batch, 3, 4)), "t": RNG.integers(0, 4, (batch, 3))}
    want = assert_every_level_matches(g, feeds)
    assert rel_error(want["dz"], fd_grads(g, "loss", feeds, ["z"])["z"]) <= 1e-6


def test_fixed_3d_logits_weighted_losses():
    with gc.Graph("fixed") as g:
        z, t = gc.input("z", (1, 8, 2), dtype="float64"), gc.input("t", (1, 8), dtype="int64")
        r = gc.input("r", (m, 1, 8), dtype="float64")
        loss = gc.sum(gc.softmax_cross_entropy(z, t) * r)
        g.output(loss=loss, dz=gc.grad(loss, z))
    assert_every_level_matches(g, {"z": RNG.normal(size=(1, 8, 2)), "t": RNG.integers(0, 2, (1, 8)),
                                   "r": RNG.normal(size=(3, 1, 8))})


def test_1d_logits_with_a_0d_label():
    with gc.Graph("one") as g:
        z, t = gc.input("z", (4,), dtype="float64"), gc.input("t", (), dtype="int64")
        loss = gc.softmax_cross_entropy(z, t)
        g.output(loss=loss, dz=gc.grad(loss, z))
    assert_every_level_matches(g, {"z": RNG.normal(size=4), "t": np.array(2)})


# 2 -- class ids out of range: one clear error everywhere -------------------------------------------------
@pytest.mark.parametrize("bad", [[0, 3], [-1, 1], [10**6, 0]])
def test_out_of_range_labels_raise_everywhere(bad):
    with gc.Graph("labels") as g:
        z, t = gc.input("z", (m, 3), dtype="float64"), gc.input("t", (m,), dtype="int64")
        loss = gc.mean(gc.softmax_cross_entropy(z, t))
        g.output(loss=loss, dz=gc.grad(loss, z), hot=gc.one_hot(t, 3))
    feeds = {"z": RNG.normal(size=(2, 3)), "t": np.array(bad)}
    with pytest.raises(gc.GraphError, match=r"t holds the id -?\d+, outside 0..2"):
        g.evaluate(feeds)
    for level in LEVELS:
        with pytest.raises(ValueError, match=r"t holds the id -?\d+, outside 0..2"):
            gc.compile(g, opt_level=level)(feeds)


# 3 -- a reduction over an axis along which the subtrahend is broadcast -----------------------------------
def test_reduction_over_the_broadcast_axis_of_a_subtrahend():
    with gc.Graph("sub") as g:
        a, b = gc.input("a", (m, 4), dtype="float64"), gc.input("b", (m, 1), dtype="float64")
        r = gc.input("r", (m, 1), dtype="float64")
        loss = gc.sum(gc.sum(a - b, axis=1, keepdims=True) * r)
        g.output(loss=loss, db=gc.grad(loss, b))
    feeds = {"a": RNG.normal(size=(3, 4)), "b": RNG.normal(size=(3, 1)), "r": RNG.normal(size=(3, 1))}
    want = assert_every_level_matches(g, feeds)
    np.testing.assert_allclose(want["db"], -4 * feeds["r"])


# 4 -- two threads, one module, the same batch size --------------------------------------------------------
def test_two_threads_never_share_buffers():
    with gc.Graph("threads") as g:
        x = gc.input("x", (m, 64), dtype="float64")
        w = gc.param("w", (64, 64), dtype="float64", init="normal")
        g.output(y=gc.tanh(x @ w) @ w)
    prog = gc.compile(g)
    params = prog.init_params(0)
    inputs = [RNG.normal(size=(32, 64)) for _ in range(2)]
    want = [g.evaluate({"x": x, **params})["y"] for x in inputs]
    errors = []

    def work(k):
        for _ in range(50):
            got = prog({"x": inputs[k], **params})["y"]
            if rel_error(got, want[k]) > 1e-12:
                errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


# 5 -- a product of two operands broadcast beyond both -----------------------------------------------------
def test_product_of_operands_broadcast_to_a_bigger_shape():
    with gc.Graph("outer") as g:
        x, w = gc.input("x", (2, 5), dtype="float64"), gc.input("w", (5,), dtype="float64")
        o = gc.input("o", (3, 2, 5), dtype="float64")
        y = gc.broadcast_to(x, (3, 2, 5)) * w
        loss = gc.sum(y * y) + gc.sum(x * o * w)
        g.output(loss=loss, y=y, dx=gc.grad(loss, x))
    assert_every_level_matches(g, {"x": RNG.normal(size=(2, 5)), "w": RNG.normal(size=5),
                                   "o": RNG.normal(size=(3, 2, 5))})


# 6 -- a strided slice of a symbolic dim -------------------------------------------------------------------
@pytest.mark.parametrize("rows", [4, 5])
def test_strided_slice_of_a_symbolic_dim(rows):
    with gc.Graph("stride") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        y = x[::2] * x[1::2][: 1]
        loss = gc.sum(y * y)
        g.output(loss=loss, y=y, dx=gc.grad(loss, x))
    assert_every_level_matches(g, {"x": RNG.normal(size=(rows, 3))})


# 7 -- a comparison of a computed expression --------------------------------------------------------------
def test_comparison_of_a_computed_expression_feeding_where():
    with gc.Graph("where") as g:
        a, b = gc.input("a", (m, 3), dtype="float64"), gc.input("b", (m, 3), dtype="float64")
        y = gc.where(a * 2 < b, a, b)
        loss = gc.sum(y)
        g.output(loss=loss, y=y, da=gc.grad(loss, a))
    assert_every_level_matches(g, {"a": RNG.normal(size=(4, 3)), "b": RNG.normal(size=(4, 3))})


# 8 -- a keepdims reduction feeding conv and pooling -------------------------------------------------------
def test_keepdims_reduction_feeding_conv_and_pool():
    with gc.Graph("keep") as g:
        x = gc.input("x", (m, 2, 4, 4), dtype="float64")
        w = gc.param("w", (3, 1, 3, 3), dtype="float64", init="he_normal")
        s = gc.logsumexp(x, axis=1, keepdims=True)
        loss = gc.sum(gc.avg_pool2d(gc.max_pool2d(gc.conv2d(s, w, padding=1), 2), 1))
        g.output(loss=loss, dw=gc.grad(loss, w))
    assert_every_level_matches(g, {"x": RNG.normal(size=(2, 2, 4, 4)), "w": RNG.normal(size=(3, 1, 3, 3))})


# 9 -- hand-written and library cross-entropy on the same logits, differentiated w.r.t. the distribution ---------
def test_hand_written_and_library_cross_entropy_together():
    with gc.Graph("both") as g:
        z, t = gc.input("z", (m, 4), dtype="float64"), gc.input("t", (m,), dtype="int64")
        p = gc.input("p", (m, 4), dtype="float64")
        hand = -gc.sum(gc.one_hot(t, 4, "float64") * gc.log(gc.softmax(z)), axis=-1)
        loss = gc.mean(hand + gc.softmax_cross_entropy(z, p))
        g.output(loss=loss, dz=gc.grad(loss, z), dp=gc.grad(loss, p))
    assert_every_level_matches(g, {"z": RNG.normal(size=(4, 4)), "t": RNG.integers(0, 4, 4),
                                   "p": RNG.random((4, 4))})


# 10 -- the mean of a product whose operands both broadcast -------------------------------------------------
def test_mean_of_a_two_sided_broadcast():
    with gc.Graph("mean") as g:
        a, b = gc.input("a", (m, 1), dtype="float64"), gc.input("b", (1, 3), dtype="float64")
        z, t = gc.input("z", (m, 2), dtype="float64"), gc.input("t", (3, m, 1), dtype="float64")
        loss = gc.mean(a * b) + gc.mean(gc.binary_cross_entropy_with_logits(z, t))
        g.output(loss=loss, da=gc.grad(loss, a), db=gc.grad(loss, b), dz=gc.grad(loss, z))
    assert_every_level_matches(g, {"a": RNG.normal(size=(4, 1)), "b": RNG.normal(size=(1, 3)),
                                   "z": RNG.normal(size=(4, 2)), "t": RNG.random((3, 4, 1))})


# 11 -- a dim no input carries --------------------------------------------------------------------------------
def test_a_dim_no_input_binds_is_refused_before_running():
    n = gc.dim("n")
    with gc.Graph("unbound") as g:
        g.output(y=gc.broadcast_to(gc.input("x", (3,), dtype="float64"), (n, 3)))
    for build in (lambda: gc.compile(g), lambda: g.evaluate({"x": np.ones(3)})):
        with pytest.raises(gc.GraphError, match="dim n is not the size of any input's axis"):
            build()


# 12 -- user names that the generated module uses too ---------------------------------------------------------
@pytest.mark.parametrize("name", ["B", "m", "lr", "np", "i", "lambda", "class", "sum", "dims", "x", "feeds"])
def test_any_user_name_builds_a_module_that_imports_and_trains(name):
    d = gc.dim(name if name.isidentifier() and name not in ("lambda", "class") else "n")
    with gc.Graph("names") as g:
        a = gc.input(name, (d, 3), dtype="float64")
        w = gc.param("W" if name != "W" else "V", (3, 2), dtype="float64", init="normal")
        y = (a @ w).named("out")
        g.output(loss=gc.mean(gc.square(y)), **{"y" if name != "y" else "z": y})
    prog = gc.compile(g, loss="loss", optimizer=gc.SGD(0.1))
    params = prog.init_params(0)
    feeds = {name: RNG.normal(size=(4, 3))}
    want = g.evaluate({**feeds, **params})
    got = prog({**feeds, **params})
    assert rel_error(got["loss"], want["loss"]) <= 1e-12
    prog.train_step(params, feeds)


def test_two_different_dims_with_one_name_are_refused():
    with gc.Graph("two") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        y = gc.input("y", (sympy.Symbol("m", integer=True), 3), dtype="float64")
        g.output(z=gc.sum(x) + gc.sum(y))
    with pytest.raises(gc.GraphError, match="two different dims are named 'm'"):
        gc.compile(g)


# 13 -- memory: buffers for a bounded number of batch sizes ---------------------------------------------------
def test_buffers_are_kept_for_the_last_few_batch_sizes_only():
    with gc.Graph("sizes") as g:
        x = gc.input("x", (m, 8), dtype="float64")
        g.output(y=gc.tanh(x) * 2)
    prog = gc.compile(g)
    for rows in range(1, 30):
        prog({"x": np.ones((rows, 8))})
    assert sorted(prog.module._compute_cache.sizes) == [(26,), (27,), (28,), (29,)]


# 14 -- an empty batch ----------------------------------------------------------------------------------------
def test_an_empty_batch_is_a_clear_error():
    with gc.Graph("empty") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        g.output(loss=gc.mean(x))
    with pytest.raises(ValueError, match="each dim needs a size of at least 1"):
        gc.compile(g)({"x": np.ones((0, 3))})
    with pytest.raises(gc.GraphError, match="each dim needs a size of at least 1"):
        g.evaluate({"x": np.ones((0, 3))})


# 16 -- a module without a training step does not speak of one ------------------------------------------------
def test_docstring_mentions_train_step_only_when_there_is_one():
    with gc.Graph("fwd") as g:
        x = gc.input("x", (m, 3))
        w = gc.param("w", (3,), init="normal")
        g.output(loss=gc.mean(x @ w))
    head = gc.compile(g).source.split('"""')[1]
    assert "train_step" not in head
    assert "train_step" in gc.compile(g, loss="loss").source.split('"""')[1]


# 17 -- the command line and the DSL under misuse --------------------------------------------------------------
def graphc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "graphc.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_build_into_a_file_is_a_clear_error(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("import graphc as gc\nwith gc.Graph('g') as g:\n    x = gc.input('x', (3,))\n"
                     "    g.output(y=x * 2)\n")
    (tmp_path / "out").write_text("a file")
    proc = graphc("build", model, "-o", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2 and "is a file, not a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_two_graphs_with_one_name_are_refused(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("import graphc as gc\nwith gc.Graph('g') as a:\n    a.output(y=gc.input('x', (3,)) * 2)\n"
                     "with gc.Graph('g') as b:\n    b.output(y=gc.input('x', (3,)) * 3)\n")
    proc = graphc("build", model, "-o", tmp_path / "build", cwd=tmp_path)
    assert proc.returncode == 2 and "two graphs are named 'g'" in proc.stderr


def test_a_none_dim_is_a_graph_error():
    with pytest.raises(gc.GraphError, match=r"gc.dim"), gc.Graph("none"):
        gc.input("x", (None, 3))


def test_a_dim_read_off_a_square_axis():
    with gc.Graph("square") as g:
        x, y = gc.input("x", (m * m, 3), dtype="float64"), gc.input("y", (m, 3), dtype="float64")
        g.output(z=gc.sum(x) + gc.sum(y))
    assert_every_level_matches(g, {"x": np.ones((16, 3)), "y": np.ones((4, 3))})


def test_a_slice_from_the_end_of_a_symbolic_dim_needs_that_many_rows():
    with gc.Graph("tail") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        g.output(y=x[-2:])
    with pytest.raises(ValueError, match="needs m - 2 >= 0"):
        gc.compile(g)({"x": np.ones((1, 3))})
    with pytest.raises(gc.GraphError, match="needs m - 2 >= 0"):
        g.evaluate({"x": np.ones((1, 3))})
    assert gc.compile(g)({"x": np.ones((3, 3))})["y"].shape == (2, 3)


def test_finite_differences_of_a_fortran_ordered_array():
    from graphc.transforms.gradcheck import numeric_grad
    x = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    np.testing.assert_allclose(numeric_grad(lambda v: float((v ** 2).sum()), x), 2 * x, rtol=1e-6)


def test_a_term_multiplied_by_zero_folds_away_and_its_input_still_binds_the_batch():
    with gc.Graph("zero") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        W = gc.param("W", (3, 3), dtype="float64", init="normal")
        loss = gc.sum(W * W) + 0 * gc.sum(x @ W)  # 0·x: an elementwise node of no inputs after simplification
        g.output(loss=loss, dW=gc.grad(loss, W), dx=gc.grad(loss, x), y=0 * x, soft=gc.log(gc.exp(0 * x) + 1))
    feeds = {"x": RNG.normal(size=(2, 3)), "W": RNG.normal(size=(3, 3))}
    want = assert_every_level_matches(g, feeds)
    assert rel_error(want["dW"], 2 * feeds["W"]) <= 1e-12 and not want["dx"].any()
    for level in LEVELS:  # predict's outputs read nothing but x's size: x still binds m
        got = gc.compile(g, opt_level=level, loss="loss").predict(feeds)
        assert rel_error(got["soft"], np.full((2, 3), np.log(2))) <= 1e-12, level


def test_an_input_named_like_a_dim_that_predict_does_not_read():
    """predict reads only ``m`` (the input), not the dim m of ``B``: its function still takes the dim first."""
    with gc.Graph("input_named_m") as g:
        b = gc.input("B", (m,), dtype="float64")
        x = gc.input("m", (2, 1), dtype="float64")
        y = gc.exp(gc.tanh(x))
        loss = gc.sum(gc.where(b < x, b, x)) + gc.sum(y)
        g.output(loss=loss, lr=gc.grad(loss, b), y=y)
    feeds = {"B": RNG.normal(size=4), "m": RNG.normal(size=(2, 1))}
    assert_every_level_matches(g, feeds)
    for level in LEVELS:
        np.testing.assert_allclose(gc.compile(g, opt_level=level).predict(feeds)["y"], np.exp(np.tanh(feeds["m"])))


def test_the_mean_over_a_strided_slice_of_a_symbolic_dim():
    """1/len(x[::2]) is 1/floor((m + 1)/2): the evaluator and the module count the rows exactly."""
    with gc.Graph("strided_mean") as g:
        x = gc.input("x", (m,), dtype="float64")
        loss = gc.mean(x[1::3])
        g.output(loss=loss, dx=gc.grad(gc.mean(x[::2]), x))
    for n in range(2, 9):
        feeds = {"x": RNG.normal(size=n)}
        want = np.zeros(n)
        want[::2] = 1 / len(want[::2])
        for got in (g.evaluate(feeds), *(gc.compile(g, opt_level=level)(feeds) for level in LEVELS)):
            np.testing.assert_allclose(got["loss"], feeds["x"][1::3].mean(), rtol=1e-12)
            np.testing.assert_allclose(got["dx"], want, rtol=1e-12)


@pytest.mark.parametrize("optimizer", [gc.SGD(0.1), gc.SGD(0.1, momentum=0.9)], ids=["sgd", "momentum"])
def test_params_named_like_builtins_and_locals_are_updated_in_place(optimizer):
    """A param named ``print`` or ``feeds`` is ``print_2`` in the file: the update writes that variable."""
    with gc.Graph("builtin_names") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        w = gc.param("print", (3,), dtype="float64", init="normal")
        v = gc.param("feeds", (3,), dtype="float64", init="normal")
        loss = gc.mean(gc.tanh(x @ w)) + gc.sum(x * v * w)
        g.output(loss=loss, dw=gc.grad(loss, w), dv=gc.grad(loss, v))
    feeds = {"x": RNG.normal(size=(4, 3))}
    for level in LEVELS:
        program = gc.compile(g, opt_level=level, loss="loss", optimizer=optimizer)
        params = program.init_params(0)
        want = g.evaluate({**feeds, **params})
        before = {k: v.copy() for k, v in params.items()}
        program.train_step(params, feeds, program.init_state(params))
        for name, grad in (("print", "dw"), ("feeds", "dv")):  # the first step of momentum SGD is plain SGD
            np.testing.assert_allclose(params[name], before[name] - 0.1 * want[grad], rtol=1e-12, err_msg=name)


def test_an_outer_product_whose_result_has_an_axis_of_size_one():
    """(m, 1, 1)·(1, 2) is (m, 1, 2): the axis of size 1 is no operand's, so the einsum leaves it out."""
    with gc.Graph("outer_one") as g:
        b = gc.input("b", (m, 1, 1), dtype="float64")
        x = gc.input("x", (1, 2), dtype="float64")
        y = b * gc.tanh(x)
        loss = gc.sum(gc.exp(gc.tanh(b))) + gc.sum(y)
        db, dx = gc.grad(loss, [b, x])
        g.output(y=y, loss=loss, db=db, dx=dx)
    feeds = {"b": RNG.normal(size=(3, 1, 1)), "x": RNG.normal(size=(1, 2))}
    want = assert_every_level_matches(g, feeds)
    np.testing.assert_allclose(want["y"], feeds["b"] * np.tanh(feeds["x"]), rtol=1e-12)


@pytest.mark.parametrize("sign", [1, -1], ids=["sum", "difference"])
def test_an_input_chosen_by_two_maxima_gets_both_gradients(sign):
    """d/dx of Σ max(x, y) ± Σ max(x, z) is [x ≥ y] ± [x ≥ z]: at -O2 one sum of two masks, counted as numbers."""
    with gc.Graph("two_maxima") as g:
        x, y, z = (gc.input(n, (3,), dtype="float64") for n in "xyz")
        loss = gc.sum(gc.maximum(x, y)) + sign * gc.sum(gc.maximum(x, z))
        g.output(loss=loss, dx=gc.grad(loss, x))
    feeds = {"x": np.zeros(3), "y": np.array([-1.0, 1.0, -1.0]), "z": np.array([-1.0, -1.0, 1.0])}
    want = assert_every_level_matches(g, feeds)
    np.testing.assert_array_equal(want["dx"], (feeds["x"] > feeds["y"]) + sign * (feeds["x"] > feeds["z"]))


# 18 -- a choice with a zero branch, where the other branch is inf or NaN --------------------------------------
def _safe_log_graph(dtype):
    with gc.Graph("safe_log") as g:
        x = gc.input("x", (m, 4), dtype=dtype)
        g.output(kept=gc.where(x > 0, gc.log(x), 0), dropped=gc.where(x <= 0, 0, gc.sqrt(x) * 2 - 1),
                 flag=gc.where(x > 0, 1, 0) + x, both=gc.where(x > 0, gc.log(x), 0) * x)
    return g


def _safe_log_expected(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        kept = np.where(x > 0, np.log(x), 0)
        return {"kept": kept, "dropped": np.where(x <= 0, 0, np.sqrt(x) * 2 - 1),
                "flag": (x > 0) + x, "both": kept * x}


SAFE_LOG_FEED = np.array([[0.0, 1.0, 2.0, -1.0], [np.inf, -np.inf, 0.5, -0.0], [np.nan, 3.0, 0.0, 1e-300]])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_zero_branch_is_zero_where_the_other_is_inf_or_nan(dtype):
    """where(x > 0, log(x), 0) is 0 at 0 and below (log gives -inf and NaN there; a multiply by the mask would keep
    NaN): the branch not taken never reaches the result, at every level."""
    x = SAFE_LOG_FEED.astype(dtype)
    want = _safe_log_expected(x)
    for level in LEVELS:
        with np.errstate(divide="ignore", invalid="ignore"):
            got = gc.compile(_safe_log_graph(dtype), opt_level=level)({"x": x})
        for k in want:
            np.testing.assert_array_equal(got[k], want[k].astype(dtype), err_msg=f"-O{level} {k}")


@pytest.mark.gpu
def test_a_zero_branch_is_zero_on_the_gpu():
    from helpers import cupy_or_skip
    cp = cupy_or_skip()
    want = _safe_log_expected(SAFE_LOG_FEED)
    got = gc.compile(_safe_log_graph("float64"), backend="cupy")({"x": SAFE_LOG_FEED})
    for k in want:
        np.testing.assert_array_equal(cp.asnumpy(got[k]), want[k], err_msg=k)


# 19 -- a comparison read as a number -----------------------------------------------------------------------
def test_a_comparison_read_as_a_number_is_its_0_or_1():
    """(x > 0)·y, (x > 0) + 1, y/(x > 0), −(x > 0): NumPy reads the bools as 0 and 1; fusing the comparison into
    the arithmetic must too (it raised TypeError at -O1 and -O2). exp of a 0/1 choice stays in float64 (a bool array
    handed to np.exp picks its float16 loop: 2.71875)."""
    with gc.Graph("comparison_numbers") as g:
        x, y = gc.input("x", (m, 3), dtype="float64"), gc.input("y", (m, 3), dtype="float64")
        g.output(times=(x > 0) * y, plus=(x > 0) + 1, half=(x > 0) * 0.5, over=y / (x > 0), neg=-(x > 0),
                 chosen=gc.where(x > 0, y, x), same=gc.equal(x > 0, y > 0), exp=gc.exp(gc.where(x > 0, 1.0, 0.0)))
    X, Y = np.array([[1.0, -1.0, 2.0], [0.0, 3.0, -2.0]]), np.array([[3.0, 4.0, 5.0], [-1.0, 2.0, 0.5]])
    with np.errstate(divide="ignore", invalid="ignore"):
        want = {"times": (X > 0) * Y, "plus": (X > 0) + 1, "half": (X > 0) * 0.5, "over": Y / (X > 0),
                "neg": -(X > 0).astype(np.int64), "chosen": np.where(X > 0, Y, X), "same": (X > 0) == (Y > 0),
                "exp": np.exp(np.where(X > 0, 1.0, 0.0))}
        for level in LEVELS:
            got = gc.compile(g, opt_level=level)({"x": X, "y": Y})
            for k in want:
                np.testing.assert_allclose(got[k].astype(float), want[k].astype(float), rtol=1e-15,
                                           err_msg=f"-O{level} {k}")


# 20 -- rows whose maximum is not finite ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_row_of_minus_inf_has_log_sum_exp_minus_inf(dtype):
    """Shifting by a row's maximum must not subtract an infinite one: a row of −inf (all masked) has log-sum-exp
    −inf, a row holding +inf has +inf and a softmax of [nan, 0, 0], as the evaluator and NumPy say."""
    with gc.Graph("infinite_rows") as g:
        x = gc.input("x", (m, 3), dtype=dtype)
        g.output(lse=gc.logsumexp(x, axis=1), sm=gc.softmax(x), lsm=gc.log_softmax(x))
    X = np.array([[-np.inf] * 3, [np.inf, 0.0, 1.0], [0.0, 1.0, -np.inf]], dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = g.evaluate({"x": X})
        np.testing.assert_array_equal(want["lse"], np.array([-np.inf, np.inf, np.log(1 + np.e)], dtype))
        for level in LEVELS:
            got = gc.compile(g, opt_level=level)({"x": X})
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=f"-O{level} {k}")


# 21 -- constants folded beyond float64's range ---------------------------------------------------------------
def test_a_constant_folded_to_infinity_is_printed_as_one():
    """x / 1e-310 folds to x·1e310, which is inf: the file names it np.inf (it wrote a bare ``inf``)."""
    with gc.Graph("infinite_constant") as g:
        x = gc.input("x", (m, 3), dtype="float64")
        g.output(y=x / 1e-310)
    X = np.array([[0.0, 1e-30, -2.0]])
    with np.errstate(invalid="ignore", over="ignore"):
        want = X * np.inf
        for level in LEVELS:
            np.testing.assert_array_equal(gc.compile(g, opt_level=level)({"x": X})["y"], want)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_constant_folded_to_infinity_in_a_kernel(dtype):
    """C has no literal for inf or NaN: the kernel writes a constant quotient (1.0/0.0)."""
    from helpers import cupy_or_skip
    cp = cupy_or_skip()
    with gc.Graph("infinite_constant") as g:
        x = gc.input("x", (m, 3), dtype=dtype)
        g.output(y=x / 1e-310 + gc.exp(x))
    X = np.array([[0.0, 1e-30, -2.0]], dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        want = X * np.inf + np.exp(X)
    for level in LEVELS:
        got = cp.asnumpy(gc.compile(g, backend="cupy", opt_level=level)({"x": X})["y"])
        np.testing.assert_array_equal(got, want, err_msg=f"-O{level}")


# 22 -- sigmoid in its tails -----------------------------------------------------------------------------------
def _sigmoid_tails(dtype):
    with gc.Graph("sigmoid_tails") as g:
        x = gc.input("x", (m, 6), dtype=dtype)
        g.output(s=gc.sigmoid(x), log_s=gc.log(gc.sigmoid(x)), silu=gc.silu(x))
    x = np.array([[-12.0, -18.0, -30.0, 0.0, 30.0, -80.0]], dtype)
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))  # below float32's range only at −88
    return g, x, {"s": exact, "log_s": np.log(exact), "silu": x * exact}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sigmoid_keeps_its_relative_precision_in_the_tails(dtype):
    """σ(−30) is 9.4e-14, not 0 (½ + ½·tanh(x/2) rounded it away in float32, and log σ became −inf); log σ(30) is
    −9.4e-14, which float32 rounds to 0: hence the absolute tolerance of one eps."""
    g, x, want = _sigmoid_tails(dtype)
    for level in LEVELS:
        got = gc.compile(g, opt_level=level)({"x": x})
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=np.finfo(dtype).eps, err_msg=f"-O{level} {k}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sigmoid_keeps_its_relative_precision_in_the_tails_on_the_gpu(dtype):
    from helpers import cupy_or_skip
    cp = cupy_or_skip()
    g, x, want = _sigmoid_tails(dtype)
    for level in LEVELS:
        got = gc.compile(g, backend="cupy", opt_level=level)({"x": x})
        for k in want:
            np.testing.assert_allclose(cp.asnumpy(got[k]), want[k], rtol=1e-6, atol=np.finfo(dtype).eps,
                                       err_msg=f"-O{level} {k}")


# 23 -- integers to negative powers ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def test_an_integer_to_a_negative_power(backend):
    """i**−2 and 3/(i·i) (which fuses to 3·i**−2) are floats; NumPy's power refuses integers to negative integer
    powers, so the exponent goes in as a float."""
    xp = np
    if backend == "cupy":
        from helpers import cupy_or_skip
        xp = cupy_or_skip()
    with gc.Graph("int_power") as g:
        i = gc.input("i", (m, 3), dtype="int64")
        g.output(inverse_square=i ** -2, three_over=3 / (i * i))
    ids = np.array([[1, 2, 4], [-3, 5, 7]])
    want = {"inverse_square": 1.0 / ids.astype(float) ** 2, "three_over": 3.0 / ids.astype(float) ** 2}
    for level in LEVELS:
        got = gc.compile(g, backend=backend, opt_level=level)({"i": ids})
        for k in want:
            np.testing.assert_allclose(xp.asnumpy(got[k]) if backend == "cupy" else got[k], want[k], rtol=1e-15,
                                       err_msg=f"-O{level} {k}")
