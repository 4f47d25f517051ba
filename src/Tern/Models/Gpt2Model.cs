using Tern.Checkpoints;
using Tern.Caching;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// GPT-2 (Radford et al. 2019): learned absolute positions, pre-LayerNorm blocks, gelu_new MLP, tied LM head.
/// Its Conv1D weights are stored [in, out]; they are transposed once at load time to the [out, in] of a linear map.
/// </summary>
internal sealed class Gpt2Model : CausalLanguageModel
{
    readonly AttentionSettings[] attention;
    readonly double eps;
    readonly Activation act;

    public Gpt2Model(HfConfig c, WeightLoader w)
    {
        int vocab = c.RequireInt("vocab_size"), hidden = c.RequireInt("n_embd", "hidden_size"), nLayers = c.RequireInt("n_layer", "num_hidden_layers");
        int heads = c.RequireInt("n_head", "num_attention_heads"), maxPos = c.RequireInt("n_positions", "max_position_embeddings");
        ModelShape.RequirePositive(c, ("n_embd", hidden), ("n_head", heads), ("n_layer", nLayers), ("vocab_size", vocab), ("n_positions", maxPos));
        ModelShape.RequireDivisible(c, "n_embd", hidden, "n_head", heads);
        int inner = c.GetInt("n_inner") ?? 4 * hidden;
        int headDim = hidden / heads;
        eps = c.GetDouble("layer_norm_epsilon") ?? 1e-5;
        act = Activations.Get(c.GetString("activation_function") ?? "gelu_new", c, "activation_function");
        bool scaleWeights = c.GetBool("scale_attn_weights") ?? true;
        bool byLayer = c.GetBool("scale_attn_by_inverse_layer_idx") ?? false;

        LowRank = LowRankLayout.FromConfig(c);
        Linear Conv1D(PartLoader part, string name, long inF, long outF) => part.Add(name,
            new Linear(w.GetTransposed(part.Weights.Prefix + name + ".weight", inF, outF), w.Get(part.Weights.Prefix + name + ".bias", outF)));

        var embedding = w.Part("transformer.");
        var wte = embedding.Get("wte.weight", vocab, hidden);
        embedding.Get("wpe.weight", maxPos, hidden);
        var parts = new List<PartWeights> { embedding.Weights };
        attention = new AttentionSettings[nLayers];
        for (int i = 0; i < nLayers; i++)
        {
            var p = w.Part($"transformer.h.{i}.");
            p.Get("ln_1.weight", hidden);
            p.Get("ln_1.bias", hidden);
            Conv1D(p, "attn.c_attn", hidden, 3 * hidden);
            Conv1D(p, "attn.c_proj", hidden, hidden);
            p.Get("ln_2.weight", hidden);
            p.Get("ln_2.bias", hidden);
            if (LowRank is { } lowRank && lowRank.Contains(p.Weights.Prefix + "mlp.c_fc"))
            {
                // InRank (its release's model): both MLP linears as products; the factors are Tern's [width, in] / [out, width].
                p.Factored("mlp.c_fc", lowRank, inner, hidden, bias: true);
                p.Factored("mlp.c_proj", lowRank, hidden, inner, bias: true);
            }
            else
            {
                Conv1D(p, "mlp.c_fc", hidden, inner);
                Conv1D(p, "mlp.c_proj", inner, hidden);
            }
            parts.Add(p.Weights);
            double scale = (scaleWeights ? 1.0 : Math.Sqrt(headDim)) / (byLayer ? i + 1 : 1);
            attention[i] = new AttentionSettings(heads, heads, headDim) { QueryScale = scale };
        }
        var head = w.Part("");
        head.Get("transformer.ln_f.weight", hidden);
        head.Get("transformer.ln_f.bias", hidden);
        if (c.GetBool("tie_word_embeddings") ?? true) head.Add("lm_head.weight", wte);
        else head.Get("lm_head.weight", vocab, hidden);
        parts.Add(head.Weights);
        Parts = parts;
        Info = new ModelInfo
        {
            ModelType = "gpt2", VocabSize = vocab, HiddenSize = hidden, Layers = nLayers, Heads = heads, KvHeads = heads,
            HeadDim = headDim, MaxPositions = maxPos, LearnedPositions = true, ParameterCount = w.ParameterCount,
        };
    }

    private protected override string TokenTable => "wte.weight";

    private protected override Tensor Embed(PartWeights w, ModelStep step)
    {
        var batch = step.Batch;
        long b = batch.InputIds.size(0), t = batch.InputIds.size(1);
        return TokenEmbeddings(w, step)
             + w["wpe.weight"].index_select(0, batch.ModelPositions.clamp_min(0).flatten()).view(b, t, -1);
    }

    private protected override Tensor Layer(int layer, PartWeights w, Tensor h, ModelStep step, LayerState cache)
    {
        long b = h.size(0), t = h.size(1);
        var s = attention[layer];
        var qkv = w.Linear("attn.c_attn").Forward(Norms.Layer(h, w["ln_1.weight"], w["ln_1.bias"], eps)).view(b, t, 3 * s.Heads, s.HeadDim);
        var attended = Attention.Forward(qkv.narrow(2, 0, s.Heads), qkv.narrow(2, s.Heads, s.Heads), qkv.narrow(2, 2 * s.Heads, s.Heads),
            step, cache, s);
        h = Attention.Project(w.Linear("attn.c_proj"), attended, h, layer, step, s);
        var m = Norms.Layer(h, w["ln_2.weight"], w["ln_2.bias"], eps);
        if (LowRank is { } lowRank && lowRank.Contains(w.Prefix + "mlp.c_fc"))
        {
            FactoredLinear Mlp(string name) => w.Factored(name, lowRank.Live(w.Prefix + name));
            return Mlp("mlp.c_proj").ForwardAdd(act.Apply(Mlp("mlp.c_fc").Forward(m)), h);
        }
        return w.Linear("mlp.c_proj").ForwardAdd(act.Apply(w.Linear("mlp.c_fc").Forward(m)), h);
    }

    /// <summary>The MLP linear maps of every block (full name, out, in): what InRank factors (fc1, fc2 as released).</summary>
    internal static IEnumerable<(string Name, long Out, long In)> MlpLinearMaps(HfConfig c)
    {
        int hidden = c.RequireInt("n_embd", "hidden_size"), inner = c.GetInt("n_inner") ?? 4 * hidden;
        for (int i = 0; i < c.RequireInt("n_layer", "num_hidden_layers"); i++)
        {
            yield return ($"transformer.h.{i}.mlp.c_fc", inner, hidden);
            yield return ($"transformer.h.{i}.mlp.c_proj", hidden, inner);
        }
    }

    private protected override Tensor Head(PartWeights w, Tensor h, ModelStep step) =>
        Linear.Project(Norms.Layer(h, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps), w["lm_head.weight"]);
}
