"""Round trip from PyTorch: the README's MLP and the digits CNN, exported to ONNX, imported with gc.from_onnx.

Forward outputs equal PyTorch's, graphc's gradients of the imported model equal autograd's, and the imported CNN
fine-tunes with the generated file's train_step. float64 throughout, so the comparisons are tight.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import graphc as gc  # noqa: E402

m = gc.dim("m")


class MLP(torch.nn.Module):
    """examples/mlp_model.py: 64-128-10 with a relu."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(64, 128), torch.nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class CNN(torch.nn.Module):
    """examples/cnn_digits.py: two conv-relu-maxpool blocks on 1×8×8, then 256-128-10."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.fc1, self.fc2 = torch.nn.Linear(256, 128), torch.nn.Linear(128, 10)

    def forward(self, x):
        h = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = torch.max_pool2d(torch.relu(self.conv2(h)), 2)
        h = h.view(h.size(0), -1)  # exported as Shape, Gather, Unsqueeze, Concat, Reshape
        return self.fc2(torch.relu(self.fc1(h)))


def exported(net, example, path):
    """``net`` in float64, exported with a dynamic batch dim. torch 2.13 defaults to the dynamo exporter, which
    needs onnxscript; the TorchScript exporter needs nothing more."""
    torch.manual_seed(0)
    net = net().double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return net


def with_loss_and_grads(g):
    """The imported graph plus a mean cross-entropy on its logits and its gradient w.r.t. every param."""
    with g:
        t = gc.input("t", (m,), dtype="int64")
        loss = gc.mean(gc.softmax_cross_entropy(gc.Tensor(g, g.outputs["logits"]), t))
        params = [gc.Tensor(g, g.params[n]) for n in g.params]
        g.output(loss=loss, **{f"d_{n}": d for n, d in zip(g.params, gc.grad(loss, params))})
    return g


def autograd(net, x, t):
    net.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(t))
    loss.backward()
    return float(loss.detach()), {name.replace(".", "_"): p.grad.numpy() for name, p in net.named_parameters()}


@pytest.mark.parametrize("net, shape", [(MLP, (64,)), (CNN, (1, 8, 8))], ids=["mlp", "cnn"])
def test_forward_and_gradients_equal_pytorch(net, shape, tmp_path):
    rng = np.random.default_rng(0)
    x, t = rng.uniform(0, 1, size=(7, *shape)), rng.integers(0, 10, size=7)
    net = exported(net, torch.from_numpy(x[:2]), tmp_path / "net.onnx")
    g = gc.from_onnx(tmp_path / "net.onnx")
    assert list(g.inputs) == ["x"] and str(g.nodes[g.inputs["x"]].shape[0]) == "m"
    assert sorted(g.params) == sorted(n.replace(".", "_") for n, _ in net.named_parameters())

    feeds = {"x": x, **g.initial_params}
    want = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(g.evaluate(feeds)["logits"], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gc.compile(g).run(feeds)["logits"], want, rtol=1e-12, atol=1e-12)

    g = with_loss_and_grads(g)
    loss, grads = autograd(net, x, t)
    for how, out in (("evaluate", g.evaluate({**feeds, "t": t})), ("compiled", gc.compile(g).run({**feeds, "t": t}))):
        assert abs(float(out["loss"]) - loss) < 1e-12, how
        for name, want_grad in grads.items():
            np.testing.assert_allclose(out[f"d_{name}"], want_grad, rtol=1e-9, atol=1e-12, err_msg=f"{how} {name}")


def test_imported_cnn_fine_tunes_with_the_generated_train_step(tmp_path):
    rng = np.random.default_rng(1)
    x, t = rng.uniform(0, 1, size=(32, 1, 8, 8)), rng.integers(0, 10, size=32)
    exported(CNN, torch.from_numpy(x[:2]), tmp_path / "cnn.onnx")
    g = gc.from_onnx(tmp_path / "cnn.onnx")
    with g:
        labels = gc.input("t", (m,), dtype="int64")
        g.output(loss=gc.mean(gc.softmax_cross_entropy(gc.Tensor(g, g.outputs["logits"]), labels)))
    module = gc.load_module(gc.compile(g, loss="loss", optimizer=gc.SGD(lr=0.1)).emit(tmp_path / "cnn_numpy.py"))
    params = {k: v.copy() for k, v in g.initial_params.items()}
    losses = [float(module.train_step(params, {"x": x, "t": t})["loss"]) for _ in range(5)]
    assert losses[-1] < losses[0], losses
    assert not np.array_equal(params["fc2_weight"], g.initial_params["fc2_weight"])


class Zoo(torch.nn.Module):
    """Layers beyond the MLP and CNN: batch norm (folded into the conv by the exporter), padded pooling, global
    pooling, layer norm, dropout, concat, slicing, clamp, activations, several outputs."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.avg = torch.nn.AvgPool2d(2, padding=1, count_include_pad=False)
        self.max = torch.nn.MaxPool2d(3, stride=1, padding=1)
        self.ln, self.drop = torch.nn.LayerNorm(16), torch.nn.Dropout(0.3)
        self.fc, self.head = torch.nn.Linear(16, 16), torch.nn.Linear(16, 5)
        self.shift = torch.nn.Parameter(torch.randn(4))

    def forward(self, x):
        f = torch.nn.functional
        h = self.avg(self.max(f.leaky_relu(self.bn(self.conv(x)), 0.1)))
        pooled = f.adaptive_avg_pool2d(h, 1).flatten(1)
        corner = h[:, :, 1:, :2].reshape(h.size(0), 8, -1).mean(-1)
        z = self.ln(torch.tanh(self.fc(self.drop(torch.cat([pooled, torch.sigmoid(corner)], dim=1)))))
        z = torch.clamp(z, -0.5, 0.8) * 2 - z.pow(2) / 3 + f.elu(z) + f.softplus(z) + f.hardsigmoid(z) + f.selu(z)
        out = self.head(z + f.silu(z) + f.hardswish(z))
        return torch.log_softmax(out, -1), torch.softmax(out, 1).amax(1, keepdim=True) + self.shift.sum(), out[:, ::2]


@pytest.mark.parametrize("opset", [13, 17])
def test_more_layers_import_with_equal_outputs(opset, tmp_path):
    torch.manual_seed(0)
    net = Zoo().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(6, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(tmp_path / "zoo.onnx"), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logp", "confidence", "every_other"],
                          dynamic_axes={"x": {0: "n"}})
    g = gc.from_onnx(tmp_path / "zoo.onnx")
    feeds = {"x": x.numpy(), **g.initial_params}
    want = [t.detach().numpy() for t in net(x)]
    for got in (g.evaluate(feeds), gc.compile(g).run(feeds)):
        assert list(got) == ["logp", "confidence", "every_other"]
        for a, b in zip(got.values(), want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
