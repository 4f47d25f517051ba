# Times Tern's one-row GEMV kernel (src/Tern/Interop/Kernels/fused.cu, compiled here with CuPy's NVRTC) against cuBLAS
# (torch.nn.functional.linear) on the Llama-2-7B decode shapes, bf16, and reports the bandwidth each reaches.
import cupy as cp, torch, json, sys
src = open("src/Tern/Interop/Kernels/fused.cu").read()
mod = cp.RawModule(code=src, options=("--std=c++17",), name_expressions=None)
gemv = mod.get_function("gemv_bf16")
res = {"gpu": torch.cuda.get_device_name(0)}
for name, n, k in [("qkv", 12288, 4096), ("o", 4096, 4096), ("gate_up", 22016, 4096), ("down", 4096, 11008), ("lm_head", 32000, 4096)]:
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16); x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
    args = (cp.uint64(y.data_ptr()), cp.uint64(w.data_ptr()), cp.uint64(x.data_ptr()), cp.uint64(0), cp.uint64(0), cp.int32(n), cp.int32(k))
    def ours(): gemv(((n + 7) // 8,), (256,), args)
    def cublas(): torch.nn.functional.linear(x, w)
    out = {}
    for label, fn in (("tern", ours), ("cublas", cublas)):
        for _ in range(5): fn()
        torch.cuda.synchronize(); s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(50): fn()
        e.record(); torch.cuda.synchronize()
        us = s.elapsed_time(e) / 50 * 1000
        out[label] = {"us": round(us, 1), "TBps": round(n * k * 2 / us / 1e6, 2)}
    ours(); torch.cuda.synchronize()
    out["max_abs_diff"] = float((y.float() - torch.nn.functional.linear(x, w).float()).abs().max())
    res[name] = out
print(json.dumps(res))
