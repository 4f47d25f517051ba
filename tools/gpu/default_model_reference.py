# The transformers reference for Tern's shipped default model (run on the GPU machine by tools/gpu/default_model.sh):
#   python3 tools/gpu/default_model_reference.py MODEL_DIR OUT.safetensors
# Loads the folder with AutoModelForCausalLM in fp32 on the CPU (as tools/fixtures/make_fixtures.py does) and saves, for two
# English prompts tokenized by the folder's tokenizer: their ids, the fp32 logits of their last 4 positions, and 20 greedy
# tokens from generate(). tests/Tern.Tests/Models/DefaultModelTests.cs checks Tern against it.
import sys, math, torch, transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.backends.cuda.matmul.allow_tf32 = False
model_dir, out = sys.argv[1], sys.argv[2]
PROMPTS = ["In the beginning of the year the", "Python is a programming language that"]
NEW, LAST = 20, 4
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
ref, margin = {}, math.inf
with torch.no_grad():
    for i, text in enumerate(PROMPTS):
        ids = torch.tensor([tok.encode(text)])
        ref[f"input_ids_{i}"] = ids[0].contiguous()
        ref[f"logits_{i}"] = model(input_ids=ids).logits[0, -LAST:].float().contiguous()
        out_ = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                              eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        ref[f"greedy_{i}"] = out_.sequences[0].contiguous()
        for step in out_.logits:
            top = step.float().topk(2, dim=-1).values
            margin = min(margin, (top[:, 0] - top[:, 1]).min().item())
        print(repr(text), "->", repr(tok.decode(out_.sequences[0][ids.shape[1]:])))
save_file(ref, out, metadata={"transformers": transformers.__version__, "torch": torch.__version__,
                              "prompts": "\n".join(PROMPTS), "last_positions": str(LAST), "new_tokens": str(NEW),
                              "min_greedy_margin": f"{margin:.5f}"})
print(f"reference written: {out}; min greedy margin {margin:.4f}")
