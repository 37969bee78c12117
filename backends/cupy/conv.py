"""The CuPy lowering of convolution and pooling: one kernel per window operation, cuBLAS for the products.

A convolution is im2col (one kernel writing the windows as the columns of a ``(C·kh·kw, m·OH·OW)`` matrix), one
2-D GEMM and one copy into NCHW; its gradients are the same pieces in the other order, and col2im sums each
input's shares in one kernel. Pooling and its gradients are one kernel each, looping over a window in C. Arrays
are read as ``raw`` (flat C-order indices, which CuPy maps through the strides), geometry is compiled in as
literals, and the batch size ``m`` comes as a scalar.
"""
from __future__ import annotations

from graphc.backends.cupy.kernels import Kernel
from graphc.backends.cupy.lowering import LOWERINGS

NCHW = "const long long w_ = i % W, h_ = i / W % H, c_ = i / (W * H) % C, n_ = i / (W * H * C);"


def _kernel(st, label: str, in_params: str, body: str, defines: dict) -> str:
    """The module-level name of an elementwise kernel with output ``T y``; ``defines`` become C constants."""
    consts = " ".join(f"const long long {k} = {v};" for k, v in defines.items())
    return st.module.kernel(Kernel("elementwise", in_params, "T y", f"{consts} {body}", ""), label)


def _ints(node_shape) -> tuple:
    return tuple(int(d) if d.is_number else d for d in node_shape)


def _geometry(st, x_operand: int = 0):
    n = st.node
    c, h, w = (int(d) for d in st.input(x_operand).shape[1:])
    kernel = n.attr("kernel") or tuple(int(d) for d in st.input(1).shape[2:])
    padding = n.attr("padding", ((0, 0), (0, 0)))
    return dict(C=c, H=h, W=w, KH=kernel[0], KW=kernel[1], SH=n.attr("stride")[0], SW=n.attr("stride")[1],
                TOP=padding[0][0], LEFT=padding[1][0])


def _im2col(st, x: str, g: dict, out_hw) -> str:
    """Scratch ``(C·kh·kw, m, OH, OW)`` holding every window of ``x`` as a column (zeros where padded)."""
    m = st.value(st.input(0).shape[0])
    cols = st.scratch(st.node.dtype, (g["C"] * g["KH"] * g["KW"], st.input(0).shape[0], *out_hw))
    body = ("const long long ow = i % OW, oh = i / OW % OH, n = i / (OW * OH) % M, k = i / (OW * OH * M); "
            "const long long c = k / (KH * KW), a = k / KW % KH, b = k % KW; "
            "const long long h = oh * SH + a - TOP, w = ow * SW + b - LEFT; "
            "y = (h >= 0 && h < H && w >= 0 && w < W) ? x[((n * C + c) * H + h) * W + w] : (T)0;")
    geometry = {**g, "OH": out_hw[0], "OW": out_hw[1]}
    name = _kernel(st, f"_im2col_{g['KH']}x{g['KW']}", "raw T x, int64 M", body, geometry)
    st.line(f"{name}({x}, {m}, {cols})  # the windows as columns")
    return cols


def _channels_first(st, g_arr: str, shape) -> str:
    """``(m, O, OH, OW)`` copied to ``(O, m, OH, OW)``: the layout of a GEMM over the whole batch."""
    m, o, oh, ow = shape
    gt = st.scratch(st.node.dtype, (o, m, oh, ow))
    st.line(f"cp.copyto({gt}, {g_arr}.transpose(1, 0, 2, 3))")
    return gt


@LOWERINGS.register("conv2d")
def _conv2d(st):
    x, w = st.args
    g = _geometry(st)
    m, o, oh, ow = _ints(st.node.shape)
    k = g["C"] * g["KH"] * g["KW"]
    cols = _im2col(st, x, g, (oh, ow))
    product = st.scratch(st.node.dtype, (o, m, oh, ow))
    st.line(f"cp.matmul({w}.reshape({o}, {k}), {cols}.reshape({k}, -1), out={product}.reshape({o}, -1))")
    st.line(f"cp.copyto({st.out}, {product}.transpose(1, 0, 2, 3))")


@LOWERINGS.register("conv2d_weight_grad")
def _conv2d_weight_grad(st):
    x, grad = st.args
    g = _geometry(st)
    shape = _ints(st.input(1).shape)
    k = g["C"] * g["KH"] * g["KW"]
    cols = _im2col(st, x, g, shape[2:])
    gt = _channels_first(st, grad, shape)
    o = shape[1]
    st.line(f"cp.matmul({gt}.reshape({o}, -1), {cols}.reshape({k}, -1).T, out={st.out}.reshape({o}, {k}))")


@LOWERINGS.register("conv2d_input_grad")
def _conv2d_input_grad(st):
    grad, w = st.args
    n = st.node
    shape = _ints(st.input(0).shape)
    _, c, h, wd = _ints(n.shape)
    o, _, kh, kw = _ints(st.input(1).shape)
    k = c * kh * kw
    gt = _channels_first(st, grad, shape)
    shares = st.scratch(n.dtype, (k, shape[0], *shape[2:]))
    st.line(f"cp.matmul({w}.reshape({o}, {k}).T, {gt}.reshape({o}, -1), out={shares}.reshape({k}, -1))")
    (top, _), (left, _) = n.attr("padding")
    g = dict(C=c, H=h, W=wd, KH=kh, KW=kw, SH=n.attr("stride")[0], SW=n.attr("stride")[1], TOP=top, LEFT=left,
             OH=shape[2], OW=shape[3])
    body = (f"{NCHW} T s = 0; "
            "for (long long a = 0; a < KH; ++a) for (long long b = 0; b < KW; ++b) { "
            "const long long hh = h_ + TOP - a, ww = w_ + LEFT - b; "
            "if (hh < 0 || ww < 0 || hh % SH || ww % SW || hh / SH >= OH || ww / SW >= OW) continue; "
            "s += shares[((((c_ * KH + a) * KW + b) * M + n_) * OH + hh / SH) * OW + ww / SW]; } y = s;")
    name = _kernel(st, f"_col2im_{kh}x{kw}", "raw T shares, int64 M", body, g)
    st.line(f"{name}({shares}, {st.value(shape[0])}, {st.out})  # each input's shares, summed")


# -- pooling: one kernel each, a loop over the window ------------------------------------------------------
WINDOW = "for (long long a = 0; a < KH; ++a) for (long long b = 0; b < KW; ++b)"
AT = "x[((n_ * C + c_) * H + oh * SH + a) * W + ow * SW + b]"
POOLED = ("const long long ow = i % OW, oh = i / OW % OH, c_ = i / (OW * OH) % C, n_ = i / (OW * OH * C);")


def _pool_geometry(st, x_operand: int = 0) -> dict:
    c, h, w = (int(d) for d in st.input(x_operand).shape[1:])
    out = st.node.shape if st.node.op in ("max_pool2d", "avg_pool2d", "max_pool2d_gather") else None
    kernel, stride = st.node.attr("kernel"), st.node.attr("stride")
    oh, ow = ((int(d) for d in out[2:]) if out is not None else
              ((h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1))
    return dict(C=c, H=h, W=w, KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1], OH=oh, OW=ow)


def _first_max(target: str) -> str:
    """C finding the window's first maximum (as NumPy's argmax): its offset in ``best_a``, ``best_b``."""
    return (f"T best = {AT.replace('a)', '0)').replace('+ b]', '+ 0]')}; long long best_a = 0, best_b = 0; "
            f"{WINDOW} {{ const T v = {AT}; if (v > best) {{ best = v; best_a = a; best_b = b; }} }} {target}")


@LOWERINGS.register("max_pool2d")
def _max_pool2d(st):
    g = _pool_geometry(st)
    name = _kernel(st, f"_max_pool_{g['KH']}x{g['KW']}", "raw T x", f"{POOLED} {_first_max('y = best;')}", g)
    st.line(f"{name}({st.args[0]}, {st.out})")


@LOWERINGS.register("max_pool2d_gather")
def _max_pool2d_gather(st):
    g = _pool_geometry(st)
    take = "y = u[((n_ * C + c_) * H + oh * SH + best_a) * W + ow * SW + best_b];"
    name = _kernel(st, f"_max_pool_gather_{g['KH']}x{g['KW']}", "raw T x, raw T u", f"{POOLED} {_first_max(take)}",
                   g)
    st.line(f"{name}({st.args[0]}, {st.args[1]}, {st.out})")


def _windows_of(body: str) -> str:
    """C looping over the windows that contain input ``(h_, w_)``, with ``oh, ow`` and the offset ``a, b``."""
    return (f"{NCHW} T s = 0; {WINDOW} {{ const long long hh = h_ - a, ww = w_ - b; "
            "if (hh < 0 || ww < 0 || hh % SH || ww % SW || hh / SH >= OH || ww / SW >= OW) continue; "
            f"const long long oh = hh / SH, ow = ww / SW; {body} }} y = s;")


@LOWERINGS.register("max_pool2d_grad")
def _max_pool2d_grad(st):
    x, _, grad = st.args
    g = _pool_geometry(st)
    first = (f"{_first_max('')} if (best_a == a && best_b == b) s += g[((n_ * C + c_) * OH + oh) * OW + ow];")
    first = first.replace("long long a = 0; a < KH; ++a) for (long long b = 0; b < KW; ++b) { const T v",
                          "long long a2 = 0; a2 < KH; ++a2) for (long long b2 = 0; b2 < KW; ++b2) { const T v")
    first = first.replace("+ oh * SH + a) * W + ow * SW + b]; if (v > best) { best = v; best_a = a; best_b = b; }",
                          "+ oh * SH + a2) * W + ow * SW + b2]; if (v > best) { best = v; best_a = a2; best_b = b2; }")
    name = _kernel(st, f"_max_pool_grad_{g['KH']}x{g['KW']}", "raw T x, raw T g", _windows_of(first), g)
    st.line(f"{name}({x}, {grad}, {st.out})  # each gradient to its window's first maximum")


@LOWERINGS.register("avg_pool2d")
def _avg_pool2d(st):
    g = _pool_geometry(st)
    body = f"{POOLED} T s = 0; {WINDOW} s += {AT}; y = s / (T)(KH * KW);"
    name = _kernel(st, f"_avg_pool_{g['KH']}x{g['KW']}", "raw T x", body, g)
    st.line(f"{name}({st.args[0]}, {st.out})")


@LOWERINGS.register("avg_pool2d_grad")
def _avg_pool2d_grad(st):
    n = st.node
    c, oh, ow = (int(d) for d in st.input(0).shape[1:])
    h, w = n.attr("input_hw")
    (kh, kw), (sh, sw) = n.attr("kernel"), n.attr("stride")
    g = dict(C=c, H=h, W=w, KH=kh, KW=kw, SH=sh, SW=sw, OH=oh, OW=ow)
    body = _windows_of("s += g[((n_ * C + c_) * OH + oh) * OW + ow] / (T)(KH * KW);")
    name = _kernel(st, f"_avg_pool_grad_{kh}x{kw}", "raw T g", body, g)
    st.line(f"{name}({st.args[0]}, {st.out})")
