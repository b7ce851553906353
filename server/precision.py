"""How each model runs: which backend, in which numeric precision.

The choice is made by measurement where it can be (workers/backend_choice.py): `plan` lists the options the
device can run natively, and the server times them on the model itself. What `plan` refuses at startup, with
the option that fits, is what a device would only emulate: emulated bf16/fp16 on a CPU runs several times
slower than fp32.

    fp32  full precision
    bf16  bfloat16 weights and activations (fp32 accumulation); CPU with AVX512_BF16/AMX (torch, OpenVINO), CUDA
    fp16  half precision; CUDA only (torch)
    int8  dynamic int8 quantisation of the Linear layers (torch.ao, or ONNX Runtime's); CPU only. Scores drift
          more than bf16: with `--precision auto` it is served only if it passes the same agreement gate as
          the rest, and asked for by name its agreement is logged (docs/benchmarks.md).

Backends: torch (every model, every device), openvino (fp32, bf16; CPU), onnxruntime (fp32, int8; CPU), and
auto, which measures them all on a CPU and keeps torch fp16 on CUDA.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tandem.workers.backend_choice import Option

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
# What each backend runs on a CPU, and the package it needs.
CPU_PRECISIONS = {"torch": ("fp32", "bf16", "int8"), "openvino": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8")}
PACKAGES = {"torch": "torch", "openvino": "openvino", "onnxruntime": "onnxruntime"}
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16 | int8
    reason: str  # why it was chosen, for the startup log


@dataclass(frozen=True)
class Plan:
    """The options to serve a model with: one means no choice to make; several are measured on the model."""

    options: tuple[Option, ...]
    gate: bool  # only options that agree with fp32 may be chosen (precision auto)
    reason: str


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""  # not Linux: no way to tell


def _field(cpuinfo: str, name: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return ""


def cpu_bf16_flag(cpuinfo: str | None = None) -> str:
    """The CPU flag that gives native bf16 ('avx512_bf16' or 'amx_bf16'), or '' when there is none."""
    flags = set(_field(_cpuinfo() if cpuinfo is None else cpuinfo, "flags").split())
    return next((f for f in _BF16_FLAGS if f in flags), "")


def cpu_identity(cpuinfo: str | None = None) -> str:
    """The CPU model name with family, model and a digest of the flags: virtual machines often report only
    "Intel(R) Xeon(R) Processor", for CPUs with and without AMX alike."""
    info = _cpuinfo() if cpuinfo is None else cpuinfo
    digest = hashlib.sha256(" ".join(sorted(_field(info, "flags").split())).encode()).hexdigest()[:12]
    return (f"{_field(info, 'model name') or 'unknown CPU'} (family {_field(info, 'cpu family')}, "
            f"model {_field(info, 'model') or '?'}, flags {digest})")


def installed(backend: str) -> bool:
    return importlib.util.find_spec(PACKAGES[backend]) is not None


def plan(requested: str, device: str, backend: str = "auto", bf16_flag: str | None = None,
         available=installed) -> Plan:
    """The options for `device` ('cpu', 'cuda', 'cuda:1'), or ValueError saying what to use instead."""
    req = (requested or "auto").strip().lower()
    backend = (backend or "auto").strip().lower()
    if req not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if str(device).startswith("cuda"):
        if backend not in ("auto", "torch"):
            raise ValueError(f"the {backend} backend runs on a CPU; on {device} use --backend torch")
        if req == "int8":
            raise ValueError("int8 here is dynamic quantisation for CPUs; on CUDA use --precision fp16")
        name = "fp16" if req == "auto" else req
        return Plan((Option("torch", name),), False, "auto: CUDA device, torch fp16 on tensor cores"
                    if req == "auto" else "asked for")
    flag = cpu_bf16_flag() if bf16_flag is None else bf16_flag
    if req == "fp16":
        fix = "--precision bf16 (this CPU has it)" if flag else "--precision fp32"
        raise ValueError(f"fp16 on a CPU is emulated and several times slower than fp32; use {fix}")
    if req == "bf16" and not flag:
        raise ValueError("this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag), so bf16 would be "
                         "emulated and slower than fp32; use --precision fp32 (or int8 for speed)")
    if backend != "auto":
        if req != "auto" and req not in CPU_PRECISIONS[backend]:
            able = [b for b, ps in CPU_PRECISIONS.items() if req in ps]
            raise ValueError(f"the {backend} backend runs {' or '.join(CPU_PRECISIONS[backend])}; for {req} use "
                             f"--backend {' or '.join(able)}")
        if not available(backend):
            raise ValueError(f"--backend {backend} needs the {PACKAGES[backend]} package, which is not installed: "
                             "pip install tandem-search (it is a dependency)")
    backends = [backend] if backend != "auto" else [b for b in CPU_PRECISIONS if available(b)]
    precisions = [req] if req != "auto" else ["fp32", *(["bf16"] if flag else []), "int8"]
    options = tuple(Option(b, p) for b in backends for p in precisions if p in CPU_PRECISIONS[b])
    if req == "auto":
        why = (f"auto: the fastest of {len(options)} options measured on this CPU whose ranking passes the loss "
               f"gate against fp32 torch ({'native bf16: ' + flag if flag else 'no native bf16'})")
    else:
        why = "asked for" + (f", on the fastest of {len(options)} backends measured" if len(options) > 1 else "")
    return Plan(options, req == "auto", why)
