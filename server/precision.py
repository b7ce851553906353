"""Which numeric precision each model runs in, chosen from what the device does natively.

`auto` is fp16 on CUDA, bf16 on a CPU with native bf16 (AVX512_BF16 or AMX, read from the CPU's flags, not
guessed), and fp32 otherwise. A precision the device would only emulate is refused at startup with the one
that fits, because emulated bf16/fp16 on a CPU runs several times slower than fp32.

    fp32  full precision
    bf16  bfloat16 weights and activations (fp32 accumulation in oneDNN); CPU with AVX512_BF16/AMX, or CUDA
    fp16  half precision; CUDA only
    int8  dynamic int8 quantisation of the Linear layers (torch.ao); CPU only. Faster still, but scores drift
          more than bf16: see docs/benchmarks.md for the measured agreement before choosing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
BACKENDS = ("torch", "openvino")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16 | int8
    reason: str  # why it was chosen, for the startup log


def cpu_bf16_flag(cpuinfo: str | None = None) -> str:
    """The CPU flag that gives native bf16 ('avx512_bf16' or 'amx_bf16'), or '' when there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ""  # not Linux: no way to tell, so no bf16 by default
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return next((f for f in _BF16_FLAGS if f in flags), "")


def choose(requested: str, device: str, backend: str = "torch", bf16_flag: str | None = None) -> Precision:
    """The precision to run in on `device` ('cpu', 'cuda', 'cuda:1'), or ValueError saying what to use."""
    req = (requested or "auto").strip().lower()
    if req not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    cuda = str(device).startswith("cuda")
    flag = cpu_bf16_flag() if bf16_flag is None else bf16_flag
    if cuda and backend != "torch":
        raise ValueError(f"the {backend} backend runs on a CPU; on {device} use --backend torch")
    if req == "auto":
        if cuda:
            return Precision("fp16", "auto: CUDA device, fp16 on tensor cores")
        if flag:
            return Precision("bf16", f"auto: this CPU has native bf16 ({flag})")
        return Precision("fp32", "auto: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag), "
                                 "and emulated bf16 is slower than fp32")
    if req == "fp16" and not cuda:
        fix = "--precision bf16 (this CPU has it)" if flag else "--precision fp32"
        raise ValueError(f"fp16 on a CPU is emulated and several times slower than fp32; use {fix}")
    if req == "bf16" and not cuda and not flag:
        raise ValueError("this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag), so bf16 would be "
                         "emulated and slower than fp32; use --precision fp32 (or int8 for speed)")
    if req == "int8" and cuda:
        raise ValueError("int8 here is dynamic quantisation for CPUs; on CUDA use --precision fp16")
    if backend == "openvino" and req not in ("fp32", "bf16"):
        raise ValueError(f"the openvino backend runs fp32 or bf16; for {req} use --backend torch")
    return Precision(req, "asked for")
