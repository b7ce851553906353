"""OpenVINO backends: the same models, their transformer run by OpenVINO on the CPU (workers/exported.py).

The transformer is converted from the loaded torch model on first use and saved as OpenVINO IR. The precision
is a compile-time hint: bf16 runs on AVX512_BF16/AMX, f32 elsewhere. OpenVINO's CPU plugin schedules on TBB
(work stealing), so a core taken by a neighbour slows it far less than an OpenMP team (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from tandem.workers.exported import atomic_write, backend_classes, example_inputs

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16")
RUNTIME_CACHE_SHAPES = 256


def version() -> str:
    import openvino

    return f"openvino {openvino.__version__}"


def compile(st_model, kind: str, precision: str, folder: Path, threads: int):
    """`infer(features)`: the model's transformer as a compiled OpenVINO model, converting the IR on first use."""
    import openvino as ov

    xml = folder / "model.xml"
    if not xml.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings are about code paths it does not take
            ir = ov.convert_model(st_model[0].auto_model, example_input=example_inputs(st_model, kind))

        def save(tmp: Path):
            ov.save_model(ir, tmp, compress_to_fp16=False)
            tmp.with_suffix(".bin").rename(xml.with_suffix(".bin"))

        atomic_write(xml, save)  # model.xml last: an interrupted conversion leaves none behind
        log.info("converted %s to OpenVINO IR in %s", kind, folder)
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
              # Kernels kept per input shape (workers/exported.py pads lengths so that few shapes occur): a bound
              # on memory whatever the traffic, at the price of a recompile (milliseconds) past it.
              "CPU_RUNTIME_CACHE_CAPACITY": str(RUNTIME_CACHE_SHAPES)}
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    names = [i.get_any_name() for i in compiled.inputs]
    request = compiled.create_infer_request()  # used only on the compute thread

    def infer(features: dict):
        out = request.infer({k: features[k].numpy() for k in names})
        return next(iter(out.values()))

    return infer


OpenVINOCrossEncoderBackend, OpenVINOEmbedderBackend = backend_classes("openvino", sys.modules[__name__], "OpenVINO")
