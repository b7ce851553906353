"""ONNX Runtime backends: the same models, their transformer run by ONNX Runtime on the CPU (workers/exported.py).

The transformer is exported from the loaded torch model on first use (torch's TorchScript-based ONNX exporter,
opset 17, dynamic batch and sequence axes, eager attention). int8 is ONNX Runtime's dynamic quantisation of that export (int8
weights, activations quantised per batch, VNNI kernels where the CPU has them): Infinity's `--engine optimum`
default. ONNX Runtime has no fast bf16 kernels on a CPU, so it runs fp32 or int8.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from tandem.workers.exported import atomic_write, backend_classes, example_inputs

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "int8")


def version() -> str:
    import onnxruntime

    import torch

    return f"onnxruntime {onnxruntime.__version__} torch {torch.__version__} eager attention"


def _export(st_model, kind: str, path: Path) -> None:
    import torch

    inputs = example_inputs(st_model, kind)
    names = list(inputs)
    model = st_model[0].auto_model
    # Eager attention traces to plain MatMul/Softmax, which ONNX Runtime's int8 kernels run faster than the
    # masking code traced from SDPA (MiniLM-L6 int8, batch 16 of passages: 130 vs 96 pairs/s).
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")

    class FirstOutput(torch.nn.Module):  # takes the tokenizer's inputs by name, in the order they are given
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(**dict(zip(names, tensors)))[0]

    out_axes = {0: "batch"} if kind == "reranker" else {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings are about code paths it does not take
        atomic_write(path, lambda tmp: torch.onnx.export(
            FirstOutput(model).eval(), tuple(inputs.values()), str(tmp), input_names=names,
            output_names=["output"], opset_version=17, dynamo=False,
            dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in names}, "output": out_axes}))


def compile(st_model, kind: str, precision: str, folder: Path, threads: int):
    """`infer(features)`: the model's transformer in an ONNX Runtime session, exporting on first use."""
    import numpy as np
    import onnxruntime as ort

    fp32 = folder / "model.onnx"
    if not fp32.exists():
        _export(st_model, kind, fp32)
        log.info("exported %s to ONNX in %s", kind, folder)
    path = fp32
    if precision == "int8":
        path = folder / "model_int8.onnx"
        if not path.exists():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            logging.disable(logging.WARNING)  # the quantiser logs a line per tensor, and advice, on the root logger
            try:
                atomic_write(path, lambda tmp: quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8))
            finally:
                logging.disable(logging.NOTSET)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def infer(features: dict):
        return session.run(None, {k: features[k].numpy().astype(np.int64, copy=False) for k in names})[0]

    return infer


OnnxCrossEncoderBackend, OnnxEmbedderBackend = backend_classes("onnxruntime", sys.modules[__name__], "Onnx")
