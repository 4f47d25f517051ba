#!/usr/bin/env python3
"""Compile-checks Tern's NVRTC kernels without a GPU: src/Tern/Interop/Kernels/fused.cu + sparse.cu + modal.cu as one program and
select.cu as another (as FusedKernels loads them), with Nvrtc.cs's options, for the architectures given (default sm_90). Needs only libnvrtc (Debian's
libnvrtc11.2 from non-free, or a CUDA toolkit). Exit 1 with NVRTC's log on an error. With --registers, each kernel's registers,
stack and spills as ptxas reports them (what a kernel change costs in occupancy, before any GPU time).
    python3 tools/gpu/nvrtc_check.py [--registers] [sm_80 sm_90 ...]"""
import ctypes, ctypes.util, pathlib, re, sys

registers = "--registers" in sys.argv[1:]
archs = [a for a in sys.argv[1:] if a != "--registers"] or ["sm_90"]

root = pathlib.Path(__file__).resolve().parents[2] / "src/Tern/Interop/Kernels"
programs = {"fused.cu": "\n".join((root / f).read_text() for f in ("fused.cu", "sparse.cu", "modal.cu")).encode(),
            "select.cu": (root / "select.cu").read_text().encode()}
for name in ("libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"):
    try:
        nvrtc = ctypes.CDLL(name)
        break
    except OSError:
        pass
else:
    sys.exit("libnvrtc not found")
failed = False
for (name, source), arch in ((p, a) for p in programs.items() for a in archs):
    prog = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source, name.encode(), 0, None, None) == 0
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-default-device"] + ([b"--ptxas-options=-v"] if registers else [])
    result = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    cubin = ctypes.c_size_t()
    if result == 0:
        nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(cubin))
    print(f"{name} {arch}: {'ok' if result == 0 else f'error {result}'}, cubin {cubin.value} bytes")
    if registers:
        kernel = None
        for line in log.value.decode().splitlines():
            if m := re.search(r"Compiling entry function '(\w+)'", line):
                kernel = m.group(1)
            elif m := re.search(r"Used (\d+) registers", line):
                print(f"  {kernel}: {m.group(1)} registers")
            elif kernel and "spill" in line and not line.rstrip().endswith("0 bytes spill loads"):
                print(f"  {kernel}: {line.split(':', 1)[-1].strip()}")
    elif log.value.strip():
        print(log.value.decode())
    failed |= result != 0
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
sys.exit(1 if failed else 0)
