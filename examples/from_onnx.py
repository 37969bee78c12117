"""Import an ONNX model, write graphc's standalone file for it, and fine-tune it from its own weights.

The model is the 64-128-10 MLP of mlp_model.py. With PyTorch installed it is a torch.nn module exported with
torch.onnx.export (a dynamic batch dim); without, the same layers are written with onnx.helper. Either way
gc.from_onnx turns the file into a graph whose params start from the model's weights (graph.initial_params); a
cross-entropy loss added with the DSL gives the generated file a train_step. Data: scikit-learn's 8×8 digits.
Needs: pip install "graphc[onnx,examples]".
"""
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

import graphc as gc

BUILD = Path(os.environ.get("GRAPHC_BUILD_DIR", "build"))
BUILD.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)


def export_with_torch(path):
    import warnings

    import torch
    torch.manual_seed(0)
    layers = {"fc1": torch.nn.Linear(64, 128), "relu": torch.nn.ReLU(), "fc2": torch.nn.Linear(128, 10)}
    net = torch.nn.Sequential(OrderedDict(layers))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 warns that dynamo=False is the older exporter
        torch.onnx.export(net, (torch.zeros(2, 64),), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return "PyTorch (torch.onnx.export)"


def export_with_onnx_helper(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    weights = {"fc1.weight": rng.normal(0, 0.18, (128, 64)), "fc1.bias": np.zeros(128),
               "fc2.weight": rng.normal(0, 0.09, (10, 128)), "fc2.bias": np.zeros(10)}
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h0"], transB=1),
             helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("Gemm", ["h", "fc2.weight", "fc2.bias"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
                              [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return "onnx.helper"


# 1. An ONNX file, as another framework would hand it over.
path = BUILD / "mlp_onnx.onnx"
try:
    made_by = export_with_torch(path)
except ImportError:
    made_by = export_with_onnx_helper(path)
print(f"wrote {path} with {made_by}")

# 2. Import it: inputs and outputs keep their names, the batch dim is m, the weights come back as initial_params.
g = gc.from_onnx(path)
x = g.nodes[g.inputs["x"]]
print(f"imported graph {g.name!r}: input x {tuple(str(d) for d in x.shape)}, outputs {list(g.outputs)}, "
      f"params {', '.join(f'{k} {v.shape}' for k, v in g.initial_params.items())}")

# 3. Add a loss with the DSL and build the standalone file: run, init_params, train_step.
with g:
    t = gc.input("t", (gc.dim("m"),), dtype="int64")
    logits = gc.Tensor(g, g.outputs["logits"])
    g.output(loss=gc.mean(gc.softmax_cross_entropy(logits, t)))
module = gc.load_module(gc.compile(g, loss="loss", optimizer=gc.SGD(lr=0.3)).emit(BUILD / "mlp_onnx_numpy.py"))
print(f"wrote {BUILD / 'mlp_onnx_numpy.py'} (run, init_params, train_step)")

# 4. Fine-tune from the model's own weights on the digits, with nothing but the generated file.
digits = load_digits()
X, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
params = {k: v.copy() for k, v in g.initial_params.items()}
before = float(module.run({"x": X, "t": y, **params})["loss"])
for _ in range(200):
    idx = rng.integers(0, len(X), 64)
    module.train_step(params, {"x": X[idx], "t": y[idx]})
out = module.run({"x": X, "t": y, **params})
print(f"200 SGD steps from the imported weights: loss {before:.4f} -> {float(out['loss']):.4f}, "
      f"accuracy {(out['logits'].argmax(axis=1) == y).mean():.4f}")
