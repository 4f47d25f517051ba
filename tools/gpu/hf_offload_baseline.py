# HF transformers + accelerate offloading baseline for issue 5 (a copy of ../shared/bench/hf_offload_baseline.py, with the
# batch, host memory and token counts as arguments): OPT-30B shape, fp16, device_map over GPU (capped) + CPU.
#   python3 tools/gpu/hf_offload_baseline.py [BATCH=8] [GPU_GIB=16] [CPU_GIB=110] [MEASURED_DECODE_STEPS=7]
# Prefill is measured; decode is measured over MEASURED_DECODE_STEPS steps and the throughput for 32 new tokens is PROJECTED
# from them (the output says so), as FlexGen's own 30B/175B numbers are. Dummy weights (constant 0.01): transfer-bound timing.
import time, json, torch, sys
from transformers import OPTConfig, OPTForCausalLM
from accelerate import infer_auto_device_map, dispatch_model
bs = int(sys.argv[1]) if len(sys.argv) > 1 else 8
gpu_gib = int(sys.argv[2]) if len(sys.argv) > 2 else 16
cpu_gib = int(sys.argv[3]) if len(sys.argv) > 3 else 110
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 7
prompt, gen = 512, 32
cfg = OPTConfig(hidden_size=7168, ffn_dim=28672, num_hidden_layers=48, num_attention_heads=56, vocab_size=50272,
                max_position_embeddings=2048, do_layer_norm_before=True, word_embed_proj_dim=7168, torch_dtype="float16")
t = time.time()
with torch.device("meta"):
    m = OPTForCausalLM(cfg).to(torch.float16)
m = m.to_empty(device="cpu")
with torch.no_grad():
    for p in m.parameters(): p.fill_(0.01)
m.eval(); m.tie_weights()
print("materialized on cpu in", round(time.time() - t, 1), "s", flush=True)
# device_map="auto" with max_memory, spelled out so the cap and the no-split rule are explicit.
dm = infer_auto_device_map(m, max_memory={0: f"{gpu_gib}GiB", "cpu": f"{cpu_gib}GiB"}, no_split_module_classes=["OPTDecoderLayer"], dtype=torch.float16)
ng = sum(1 for v in dm.values() if v == 0); nc = sum(1 for v in dm.values() if v == "cpu")
m = dispatch_model(m, device_map=dm)
print("device_map: gpu modules", ng, "cpu modules", nc, flush=True)
ids = torch.randint(3, 50000, (bs, prompt)).cuda()
res = {"system": "hf-accelerate", "bs": bs, "gpu_cap_GiB": gpu_gib, "cpu_GiB": cpu_gib, "prompt": prompt, "gen": gen,
       "card": torch.cuda.get_device_name(0)}
with torch.no_grad():
    torch.cuda.synchronize(); t = time.time()
    m.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
    torch.cuda.synchronize(); res["prefill_s"] = round(time.time() - t, 2)
    t = time.time()
    m.generate(ids, max_new_tokens=steps + 1, min_new_tokens=steps + 1, do_sample=False)
    torch.cuda.synchronize(); tt = time.time() - t
res["decode_s_per_step"] = round((tt - res["prefill_s"]) / steps, 3)
res["projected"] = True
res["projected_total_s"] = round(res["prefill_s"] + (gen - 1) * res["decode_s_per_step"], 1)
res["projected_throughput_tok_s"] = round(bs * gen / res["projected_total_s"], 3)
res["gpu_peak_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
print(json.dumps(res), flush=True)
