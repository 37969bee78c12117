"""The emulated GPU (tests/emulated_gpu): its semantics against NumPy and against CuPy's documented behaviour.

The emulation is loaded as a private module (``cupy_emulated``), so these tests never replace a real CuPy.
"""
import numpy as np
import pytest

import emulated_gpu

cp = emulated_gpu.load("cupy_emulated")
if cp.emulation.compiler() is None:
    pytest.skip("no C++ compiler to build emulated kernels with", allow_module_level=True)

rng = np.random.default_rng(0)


def device(shape, dtype=np.float64):
    return cp.asarray(rng.normal(size=shape).astype(dtype))


# -- arrays -----------------------------------------------------------------------------------------------
def test_no_implicit_conversion_to_numpy():
    x = cp.arange(3)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x)
    with pytest.raises(TypeError):
        np.arange(3.0) + x
    with pytest.raises(TypeError, match="Unsupported type"):
        cp.add(x, np.arange(3))
    np.testing.assert_array_equal(x.get(), [0, 1, 2])
    np.testing.assert_array_equal(cp.asnumpy(x), [0, 1, 2])


def test_uninitialized_memory_is_recognizable_garbage():
    assert np.isnan(cp.empty((2, 3), cp.float32).get()).all()
    assert np.isnan(cp.empty_like(cp.zeros(4)).get()).all()
    assert (cp.empty(3, cp.int64).get() == np.frombuffer(b"\xa5" * 8, np.int64)[0]).all()


def test_views_share_memory_and_copies_do_not():
    x = cp.zeros((3, 4))
    x[1:, :2] = 5.0
    x.T[0, 2] = 7.0
    x.reshape(12)[3] = 1.0
    c = x.copy()
    c.fill(-1)
    expected = np.zeros((3, 4))
    expected[1:, :2], expected[2, 0], expected[0, 3] = 5.0, 7.0, 1.0
    np.testing.assert_array_equal(x.get(), expected)


def test_cupy_13_names_only():
    assert cp.bool_ is np.bool_ and not hasattr(cp, "bool")  # cupy.bool arrived in CuPy 14
    with pytest.raises(TypeError, match="Wrong arguments"):
        cp.add(cp.ones(2), 1, out=cp.ones(2), where=cp.ones(2, cp.bool_))
    with pytest.raises(TypeError, match="Did not understand"):
        cp.einsum("i->", cp.ones(2), out=cp.ones(()))
    with pytest.raises(TypeError):
        cp.take(cp.ones(3), cp.arange(2), mode="clip")


def test_ufuncs_and_reductions_match_numpy():
    a, b = device((3, 4)), device((4,))
    out = cp.empty((3, 4))
    assert cp.logaddexp(a, b, out=out) is out
    np.testing.assert_allclose(out.get(), np.logaddexp(a.get(), b.get()))
    np.testing.assert_allclose((a * 2 - b / 3).get(), a.get() * 2 - b.get() / 3)
    kept = cp.empty((3, 1))
    assert cp.sum(a, axis=1, keepdims=True, out=kept) is kept
    np.testing.assert_allclose(kept.get(), a.get().sum(axis=1, keepdims=True))
    np.testing.assert_allclose(cp.max(a, axis=0).get(), a.get().max(axis=0))
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        cp.sum(a, axis=1, out=cp.empty(4))
    np.testing.assert_allclose(cp.matmul(a, device((4, 2))).shape, (3, 2))


def test_copyto_and_indexing_follow_cupy():
    dst = cp.zeros((2, 3))
    cp.copyto(dst, cp.asarray(np.array([1.0, 2.0, 3.0])), where=cp.asarray(np.array([True, False, True])))
    np.testing.assert_array_equal(dst.get(), [[1, 0, 3], [1, 0, 3]])
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        cp.copyto(dst, np.ones(3))
    with pytest.raises(TypeError, match="Cannot cast"):
        cp.copyto(dst, cp.ones(3), where=cp.ones(3))
    taken = cp.take(cp.arange(5.0), cp.asarray(np.array([1, 6, -1])))  # out-of-range indices wrap
    np.testing.assert_array_equal(taken.get(), [1, 1, 4])
    flat = cp.zeros(4)
    cp.put(flat, cp.asarray(np.array([0, 9])), cp.asarray(np.array([1.0, 2.0])), mode="clip")
    np.testing.assert_array_equal(flat.get(), [1, 0, 0, 2])
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        flat[...] = np.ones(4)


# -- ElementwiseKernel ----------------------------------------------------------------------------------------
def test_elementwise_kernel_broadcasts_and_returns_a_fresh_array():
    kernel = cp.ElementwiseKernel("T x, T y", "T z", "z = x * y + 1", "muladd")
    x, y = device((3, 1)), device((4,))
    z = kernel(x, y)
    assert z.shape == (3, 4) and z.dtype == np.float64
    np.testing.assert_allclose(z.get(), x.get() * y.get() + 1)
    out = cp.empty((3, 4))
    assert kernel(x, y, out) is out
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        kernel(x, y, cp.empty((4,)))
    with pytest.raises(ValueError, match="broadcast"):
        kernel(x, device((5,)), cp.empty((3, 4)))


def test_kernel_scalars_take_the_parameter_type_but_arrays_must_match_it():
    scale = cp.ElementwiseKernel("float32 x, float64 lr", "float32 y", "y = x * lr", "scale")
    x = device((3,), np.float32)
    for lr in (0.5, np.float32(0.5), np.float64(0.5), cp.asarray(0.5)):  # Python, NumPy scalars, float64 0-d
        np.testing.assert_allclose(scale(x, lr).get(), x.get() * 0.5)
    with pytest.raises(TypeError, match="Type is mismatched. lr float32 float64"):
        scale(x, cp.asarray(np.float32(0.5)))
    with pytest.raises(TypeError, match="Type is mismatched. x float64 float32"):
        scale(device((3,)), 0.5)
    with pytest.raises(TypeError, match="Unsupported type"):
        scale(x, np.array(0.5))  # a NumPy 0-d array is neither a scalar nor device memory


def test_kernel_parameter_names_and_errors():
    with pytest.raises(ValueError, match="Can not use 'i' as a parameter name"):
        cp.ElementwiseKernel("T x, int64 i", "T y", "y = x", "k")
    with pytest.raises(ValueError, match="Invalid kernel name"):
        cp.ElementwiseKernel("T x", "T y", "y = x", "my kernel")
    with pytest.raises(cp.cuda.compiler.CompileException):  # a scalar named exp hides the function exp
        cp.ElementwiseKernel("T x, int64 exp", "T y", "y = exp(x)", "shadowed")(device((2,)), 3)
    # a scalar parameter named like an array one is shadowed by the array element, silently, as in CUDA
    clash = cp.ElementwiseKernel("float64 x0, int64 x0", "float64 y", "y = x0", "clash")
    x = device((3,))
    np.testing.assert_array_equal(clash(x, 7).get(), x.get())


def test_kernels_compute_with_c_semantics():
    divide = cp.ElementwiseKernel("int64 a, int64 b", "float64 y", "y = a / b", "int_divide")
    np.testing.assert_array_equal(divide(cp.asarray(np.array([7, -7])), 2).get(), [3, -3])
    one = cp.full((1,), 1.0, cp.float32)
    in_float = cp.ElementwiseKernel("float32 x", "float32 y", "y = (x + 1e-8f) - x", "in_float")
    in_double = cp.ElementwiseKernel("float32 x", "float32 y", "y = (x + 1e-8) - x", "in_double")
    assert in_float(one).get()[0] == 0.0  # float arithmetic stays float
    assert in_double(one).get()[0] == np.float32(1e-8)  # a double literal promotes, as in CUDA C


def test_raw_parameters_with_size_and_a_preamble():
    kernel = cp.ElementwiseKernel("raw T x", "raw T y", "y[i] = twice(x[size_x - 1 - i])", "reverse_twice",
                                  preamble="template <typename T> __device__ T twice(T v) { return 2 * v; }\n"
                                           "#define size_x x.size()")
    x, y = cp.arange(4.0), cp.zeros(4)
    kernel(x, y, size=4)
    np.testing.assert_array_equal(y.get(), [6, 4, 2, 0])
    with pytest.raises(ValueError, match="Loop size is undecided"):
        kernel(x, y)
    with pytest.raises(ValueError, match="can be used only if all of the ndarray are 'raw'"):
        cp.ElementwiseKernel("T x", "T y", "y = x", "copy")(x, y, size=4)


# -- ReductionKernel ---------------------------------------------------------------------------------------
def test_reduction_kernel_axes_keepdims_out_and_post_map():
    norm = cp.ReductionKernel("T x", "T y", "x * x", "a + b", "y = sqrt(a)", "0", "l2norm")
    x = device((2, 3, 4))
    np.testing.assert_allclose(norm(x).get(), np.sqrt((x.get() ** 2).sum()))
    np.testing.assert_allclose(norm(x, axis=(0, 2)).get(), np.sqrt((x.get() ** 2).sum(axis=(0, 2))))
    out = cp.empty((2, 1, 4))
    assert norm(x, axis=1, keepdims=True, out=out) is out
    np.testing.assert_allclose(out.get(), np.sqrt((x.get() ** 2).sum(axis=1, keepdims=True)))
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        norm(x, axis=1, out=cp.empty((2, 1, 4)))


def test_reduction_kernel_types_identity_and_scalars():
    # an integer count reduced in a wider type, a scalar argument, and a preamble function as the map
    count = cp.ReductionKernel("T x, T limit", "int64 n", "above(x, limit)", "a + b", "n = a", "0", "count",
                               reduce_type="long long",
                               preamble="template <typename T> __device__ int above(T x, T l) { return x > l; }")
    x = device((5, 6))
    np.testing.assert_array_equal(count(x, 0.5, axis=1).get(), (x.get() > 0.5).sum(axis=1))
    peak = cp.ReductionKernel("T x", "T y", "x", "max(a, b)", "y = a", "-INFINITY", "peak")
    np.testing.assert_array_equal(peak(x, axis=0).get(), x.get().max(axis=0))
    with pytest.raises(TypeError, match="Type is mismatched"):
        count(x, cp.asarray(np.float32(0.5)))


# -- random, cuda -------------------------------------------------------------------------------------------
def test_random_generator_has_cupys_signature_and_its_own_stream():
    a = cp.random.default_rng([3, 0]).standard_normal((2, 3), dtype=cp.float32)
    b = cp.random.default_rng([3, 0]).standard_normal((2, 3), dtype=cp.float32)
    assert a.dtype == np.float32 and a.shape == (2, 3)
    np.testing.assert_array_equal(a.get(), b.get())  # deterministic per seed
    assert not np.allclose(a.get(), np.random.default_rng([3, 0]).standard_normal((2, 3), dtype=np.float32))
    out = cp.empty((4,))
    assert cp.random.default_rng(1).standard_normal(dtype=cp.float64, out=out) is out
    with pytest.raises(TypeError, match="wrong type"):
        cp.random.default_rng(1).standard_normal(dtype=cp.float32, out=out)
    assert cp.cuda.runtime.getDeviceCount() == 1
    cp.cuda.Device().synchronize()
    with cp.cuda.Stream():
        cp.cuda.get_current_stream().synchronize()


# -- counters ---------------------------------------------------------------------------------------------
def test_counters_count_operations_allocations_and_transfers():
    host = np.ones((4, 3))
    with cp.emulation.counting() as c:
        x = cp.asarray(host)
        y = cp.empty_like(x)
        cp.exp(x, out=y)
        cp.sum(y, axis=0)
        y.get()
    assert (c["host_to_device"], c["host_to_device_bytes"]) == (1, host.nbytes)
    assert (c["device_to_host"], c["device_to_host_bytes"]) == (1, host.nbytes)
    assert (c["allocations"], c["allocated_bytes"]) == (3, 2 * host.nbytes + 3 * 8)
    assert (c["ufunc_calls"], c["reductions"], c["device_ops"]) == (1, 1, 2)
    before = cp.emulation.counters()
    cp.exp(x, out=y)
    assert cp.emulation.counters()["ufunc_calls"] == before["ufunc_calls"] + 1


def test_counters_see_the_copies_cupy_makes():
    b = cp.zeros((2, 3, 6, 6))
    with cp.emulation.counting(trace=True) as c:
        cp.add(b[:, :, 0:4, 0:4], 1.0, out=b[:, :, 0:4, 0:4])  # two views of one region: the input is copied
    assert c["allocations"] == 1 and c["copies"] == 1 and "copy" in c["trace"][0]
    view = b[:, :, 0:4, 0:4]
    with cp.emulation.counting() as c:
        cp.add(view, 1.0, out=view)  # the very same array as input and output: no copy
    assert c["allocations"] == 0
    w, x, out = cp.ones((5, 4)), cp.ones((3, 4, 2)), cp.empty((3, 5, 2))
    with cp.emulation.counting() as c:
        cp.matmul(w, x, out=out)  # a 2-D operand broadcast over the batch: three pointer arrays, three kernels
    assert (c["matmuls"], c["kernel_launches"], c["allocations"]) == (1, 3, 3)
    with cp.emulation.counting() as c:
        cp.matmul(w.T.T, x, out=out)
    assert c["copies"] == 0
    wt = cp.ones((4, 5)).T
    with cp.emulation.counting() as c:
        cp.matmul(wt, x, out=out)  # a transposed weight is packed into a C-contiguous copy first
    assert c["copies"] == 1


def test_kernels_compile_once():
    kernel = cp.ElementwiseKernel("T x", "T y", "y = x + 2", "add_two")
    x = cp.arange(3.0)
    kernel(x)
    with cp.emulation.counting() as c:
        y = kernel(x)
    assert (c["kernel_launches"], c["kernel_compiles"], c["allocations"]) == (1, 0, 1)
    np.testing.assert_array_equal(y.get(), [2, 3, 4])
