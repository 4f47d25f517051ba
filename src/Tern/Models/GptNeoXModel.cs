using Tern.Checkpoints;
using Tern.Caching;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// GPT-NeoX / Pythia (Black et al. 2022): LayerNorm blocks with a parallel residual h + attn(ln1(h)) + mlp(ln2(h))
/// (or sequential when <c>use_parallel_residual</c> is false), rotary embedding on the first <c>rotary_pct</c> of each head.
/// The fused query_key_value weight interleaves q, k, v per head; it is reordered at load time to [q; k; v].
/// </summary>
internal sealed class GptNeoXModel : CausalLanguageModel
{

    readonly bool parallel;
    readonly double eps;
    readonly Activation act;
    readonly AttentionSettings attention;
    readonly RotaryEmbedding rotary;

    public GptNeoXModel(HfConfig c, WeightLoader w)
    {
        int vocab = c.RequireInt("vocab_size"), hidden = c.RequireInt("hidden_size"), nLayers = c.RequireInt("num_hidden_layers");
        int heads = c.RequireInt("num_attention_heads"), inter = c.RequireInt("intermediate_size");
        ModelShape.RequirePositive(c, ("hidden_size", hidden), ("num_attention_heads", heads), ("num_hidden_layers", nLayers), ("vocab_size", vocab), ("intermediate_size", inter));
        ModelShape.RequireDivisible(c, "hidden_size", hidden, "num_attention_heads", heads);
        int headDim = hidden / heads;
        parallel = c.GetBool("use_parallel_residual") ?? true;
        eps = c.GetDouble("layer_norm_eps") ?? 1e-5;
        bool bias = c.GetBool("attention_bias") ?? true;
        act = Activations.Get(c.GetString("hidden_act") ?? "gelu", c, "hidden_act");
        attention = new AttentionSettings(heads, heads, headDim);

        if (w.Trainable)
            throw new NotSupportedException("training GPT-NeoX (its q|k|v rows are reordered at load) is not supported yet: the trained tensor would not be the one in the checkpoint; train a Llama-family or OPT model.");
        // Rows of the per-head layout [head][q|k|v][dim] go to [q|k|v][head][dim]: a transposed view made contiguous (no
        // gather, so it also runs on the meta device that `tern info` and `tern offload plan` size models on).
        Tensor Reorder(Tensor t)
        {
            using var scope = torch.NewDisposeScope();
            return t.view(new long[] { heads, 3, headDim }.Concat(t.shape.Skip(1)).ToArray()).transpose(0, 1).contiguous().view(t.shape)
                .DetachFromDisposeScope();
        }
        var embedding = w.Part("gpt_neox.");
        var embed = embedding.Get("embed_in.weight", vocab, hidden);
        var parts = new List<PartWeights> { embedding.Weights };
        for (int i = 0; i < nLayers; i++)
        {
            var p = w.Part($"gpt_neox.layers.{i}.");
            p.Get("input_layernorm.weight", hidden);
            p.Get("input_layernorm.bias", hidden);
            var qkv = w.Linear(p.Weights.Prefix + "attention.query_key_value", 3 * hidden, hidden, bias);
            p.Add("attention.query_key_value", new Linear(Reorder(qkv.Weight), qkv.Bias is null ? null : Reorder(qkv.Bias)));
            qkv.Dispose();
            p.Linear("attention.dense", hidden, hidden, bias);
            p.Get("post_attention_layernorm.weight", hidden);
            p.Get("post_attention_layernorm.bias", hidden);
            p.Linear("mlp.dense_h_to_4h", inter, hidden, true);
            p.Linear("mlp.dense_4h_to_h", hidden, inter, true);
            parts.Add(p.Weights);
        }
        var head = w.Part("");
        head.Get("gpt_neox.final_layer_norm.weight", hidden);
        head.Get("gpt_neox.final_layer_norm.bias", hidden);
        if (c.GetBool("tie_word_embeddings") ?? false) head.Add("embed_out.weight", embed);
        else head.Get("embed_out.weight", vocab, hidden);
        parts.Add(head.Weights);
        Parts = parts;
        rotary = new RotaryEmbedding(RopeSettings.FromConfig(c), headDim, w.Device, w.DType);
        Info = new ModelInfo
        {
            ModelType = "gpt_neox", VocabSize = vocab, HiddenSize = hidden, Layers = nLayers, Heads = heads, KvHeads = heads,
            HeadDim = headDim, MaxPositions = c.GetInt("max_position_embeddings") ?? 2048, LearnedPositions = false,
            ParameterCount = w.ParameterCount,
        };
    }

    private protected override string TokenTable => "embed_in.weight";

    private protected override Tensor Embed(PartWeights w, ModelStep step)
    {
        return TokenEmbeddings(w, step);
    }

    private protected override Tensor Layer(int layer, PartWeights w, Tensor h, ModelStep step, LayerState cache)
    {
        long b = h.size(0), t = h.size(1);
        int heads = attention.Heads;
        var qkv = w.Linear("attention.query_key_value").Forward(Norms.Layer(h, w["input_layernorm.weight"], w["input_layernorm.bias"], eps))
            .view(b, t, 3 * heads, attention.HeadDim);
        bool queriesInAttention = Attention.RotatesQueries(cache, step, qkv);
        var (q, k, cachedKeys) = step.Rotary(rotary).QueryKey(qkv, heads, heads, cache.KeysAtCacheIndex, queriesInAttention);
        var attended = Attention.Forward(q, k, qkv.narrow(2, 2 * heads, heads), step, cache, attention, cachedKeys, queriesInAttention);
        Tensor Mlp(Tensor x) => w.Linear("mlp.dense_4h_to_h").Forward(act.Apply(w.Linear("mlp.dense_h_to_4h")
            .Forward(Norms.Layer(x, w["post_attention_layernorm.weight"], w["post_attention_layernorm.bias"], eps))));
        var parallelMlp = parallel ? Mlp(h) : null; // the parallel residual reads the layer's input
        h = Attention.Project(w.Linear("attention.dense"), attended, h, layer, step, attention);
        return h + (parallelMlp ?? Mlp(h));
    }

    private protected override Tensor Head(PartWeights w, Tensor h, ModelStep step) =>
        Linear.Project(Norms.Layer(h, w["gpt_neox.final_layer_norm.weight"], w["gpt_neox.final_layer_norm.bias"], eps), w["embed_out.weight"]);

    private protected override void DisposeBuffers() => rotary.Dispose();
}
