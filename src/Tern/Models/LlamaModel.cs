using Tern.Checkpoints;
using Tern.Caching;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// Llama family (Llama 1/2/3, and the Llama-shaped Mistral and Qwen2 configs): pre-RMSNorm blocks, rotary positions,
/// grouped-query attention, gated MLP act(x·W_gate)⊙(x·W_up)·W_down. Optional q/k/v(/o) biases (Qwen2, attention_bias),
/// MLP biases (mlp_bias), tied embeddings, Mistral/Qwen2 sliding windows.
/// </summary>
internal sealed class LlamaModel : CausalLanguageModel
{
    readonly AttentionSettings[] attention;
    readonly RotaryEmbedding rotary;
    readonly Activation act;
    readonly double eps;
    readonly int intermediate;

    public LlamaModel(HfConfig c, WeightLoader w)
    {
        int vocab = c.RequireInt("vocab_size"), hidden = c.RequireInt("hidden_size"), nLayers = c.RequireInt("num_hidden_layers");
        int heads = c.RequireInt("num_attention_heads"), kvHeads = c.GetInt("num_key_value_heads") ?? heads;
        int headDim = c.GetInt("head_dim") ?? hidden / heads;
        intermediate = c.RequireInt("intermediate_size");
        ModelShape.RequirePositive(c, ("num_attention_heads", heads), ("num_key_value_heads", kvHeads), ("hidden_size", hidden),
            ("num_hidden_layers", nLayers), ("vocab_size", vocab), ("intermediate_size", intermediate), ("head_dim", headDim));
        if (heads % kvHeads != 0) throw c.Error("num_key_value_heads", $"({kvHeads}) must divide num_attention_heads ({heads})");
        eps = c.GetDouble("rms_norm_eps") ?? 1e-6;
        act = Activations.Get(c.GetString("hidden_act") ?? "silu", c, "hidden_act");
        string type = c.ModelType;
        bool qkvBias = type == "qwen2" || (c.GetBool("attention_bias") ?? false);
        bool outBias = type != "qwen2" && (c.GetBool("attention_bias") ?? false);
        bool mlpBias = c.GetBool("mlp_bias") ?? false;
        int[] windows = LayerWindows(c, type, nLayers);
        LowRank = LowRankLayout.FromConfig(c);

        var embedding = w.Part("model.");
        var embed = embedding.Get("embed_tokens.weight", vocab, hidden);
        var parts = new List<PartWeights> { embedding.Weights };
        attention = new AttentionSettings[nLayers];
        for (int i = 0; i < nLayers; i++)
        {
            var p = w.Part($"model.layers.{i}.");
            p.Get("input_layernorm.weight", hidden);
            p.Fused("self_attn.qkv_proj", new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj" },
                new long[] { heads * headDim, kvHeads * headDim, kvHeads * headDim }, hidden, qkvBias);
            p.Linear("self_attn.o_proj", hidden, heads * headDim, outBias);
            p.Get("post_attention_layernorm.weight", hidden);
            if (LowRank is { } lowRank && lowRank.Contains(p.Weights.Prefix + "mlp.down_proj"))
            {
                // InRank: each MLP linear its own product (gate and up are not fused: their factors differ).
                p.Factored("mlp.gate_proj", lowRank, intermediate, hidden, mlpBias);
                p.Factored("mlp.up_proj", lowRank, intermediate, hidden, mlpBias);
                p.Factored("mlp.down_proj", lowRank, hidden, intermediate, mlpBias);
            }
            else
            {
                p.Fused("mlp.gate_up_proj", new[] { "mlp.gate_proj", "mlp.up_proj" }, new long[] { intermediate, intermediate }, hidden, mlpBias);
                p.Linear("mlp.down_proj", hidden, intermediate, mlpBias);
            }
            parts.Add(p.Weights);
            attention[i] = new AttentionSettings(heads, kvHeads, headDim) { SlidingWindow = windows[i] };
        }
        var head = w.Part("");
        head.Get("model.norm.weight", hidden);
        // As transformers: a saved lm_head is ignored when the embeddings are tied.
        if (c.GetBool("tie_word_embeddings") ?? false) head.Add("lm_head.weight", embed);
        else head.Get("lm_head.weight", vocab, hidden);
        parts.Add(head.Weights);
        Parts = parts;
        rotary = new RotaryEmbedding(RopeSettings.FromConfig(c), headDim, w.Device, w.DType);
        Info = new ModelInfo
        {
            ModelType = type, VocabSize = vocab, HiddenSize = hidden, Layers = nLayers, Heads = heads, KvHeads = kvHeads,
            HeadDim = headDim, MaxPositions = c.GetInt("max_position_embeddings") ?? 2048, LearnedPositions = false,
            ParameterCount = w.ParameterCount,
        };
    }

    /// <summary>The MLP linear maps of every layer (full name, out, in): what InRank factors.</summary>
    internal static IEnumerable<(string Name, long Out, long In)> MlpLinearMaps(HfConfig c)
    {
        int hidden = c.RequireInt("hidden_size"), intermediate = c.RequireInt("intermediate_size");
        for (int i = 0; i < c.RequireInt("num_hidden_layers"); i++)
        {
            yield return ($"model.layers.{i}.mlp.gate_proj", intermediate, hidden);
            yield return ($"model.layers.{i}.mlp.up_proj", intermediate, hidden);
            yield return ($"model.layers.{i}.mlp.down_proj", hidden, intermediate);
        }
    }

    /// <summary>
    /// The sliding window of each layer (0 = full attention): transformers 5 writes <c>layer_types</c>
    /// ("sliding_attention" / "full_attention"); older configs say it with <c>sliding_window</c> (Mistral: every layer) or
    /// <c>use_sliding_window</c> + <c>max_window_layers</c> (Qwen2: the layers from max_window_layers on).
    /// </summary>
    static int[] LayerWindows(HfConfig c, string type, int layers)
    {
        int window = c.GetInt("sliding_window") ?? 0;
        if (c.Json["layer_types"] is System.Text.Json.Nodes.JsonArray types)
        {
            if (types.Count != layers) throw c.Error("layer_types", $"has {types.Count} entries for {layers} layers");
            return types.Select((t, i) => t?.ToString() switch
            {
                "full_attention" => 0,
                "sliding_attention" when window > 0 => window,
                "sliding_attention" => throw c.Error("sliding_window", $"must be set: layer {i} is 'sliding_attention'"),
                var other => throw c.Error($"layer_types[{i}]", $"is '{other}' (supported: full_attention, sliding_attention)"),
            }).ToArray();
        }
        if (type == "qwen2")
        {
            if (!(c.GetBool("use_sliding_window") ?? false)) return new int[layers];
            int from = c.GetInt("max_window_layers") ?? layers;
            return Enumerable.Range(0, layers).Select(i => i >= from ? window : 0).ToArray();
        }
        return Enumerable.Repeat(type == "mistral" ? window : 0, layers).ToArray();
    }

    private protected override Tensor Embed(PartWeights w, ModelStep step)
    {
        return TokenEmbeddings(w, step);
    }

    private protected override Tensor Layer(int layer, PartWeights w, Tensor h, ModelStep step, LayerState cache)
    {
        long b = h.size(0), t = h.size(1);
        var s = attention[layer];
        var normed = Norms.Rms(h, w["input_layernorm.weight"], eps);
        if (Attention.KeptHeads(layer, h, step, cache) is { } kept)
        {
            // DejaVu's head-subset attention: the kept heads' queries and every key and value, attention of the kept heads.
            var columns = Attention.HeadColumns(kept, step, s);
            var (queries, keysAndValues) = Attention.KeptQkv(w.Linear("self_attn.qkv_proj"), normed, columns, s);
            var rotation = step.Rotary(rotary);
            var keptQ = rotation.Rotate(queries, (int)kept.size(2));
            var keys = rotation.Rotate(keysAndValues, s.KvHeads);
            var keptOutputs = Attention.ForwardKept(keptQ, keys, keysAndValues.narrow(2, s.KvHeads, s.KvHeads), kept, step, cache, s);
            h = Attention.ProjectKept(w.Linear("self_attn.o_proj"), keptOutputs, columns, h, s);
        }
        else
        {
            var qkv = w.Linear("self_attn.qkv_proj").Forward(normed).view(b, t, s.Heads + 2 * s.KvHeads, s.HeadDim);
            bool queriesInAttention = Attention.RotatesQueries(cache, step, qkv);
            var (q, k, cachedKeys) = step.Rotary(rotary).QueryKey(qkv, s.Heads, s.KvHeads, cache.KeysAtCacheIndex, queriesInAttention);
            var attended = Attention.Forward(q, k, qkv.narrow(2, s.Heads + s.KvHeads, s.KvHeads), step, cache, s, cachedKeys, queriesInAttention);
            h = Attention.Project(w.Linear("self_attn.o_proj"), attended, h, layer, step, s);
        }
        var m = Norms.Rms(h, w["post_attention_layernorm.weight"], eps);
        if (LowRank is { } lowRank && lowRank.Contains(w.Prefix + "mlp.down_proj"))
        {
            FactoredLinear Mlp(string name) => w.Factored(name, lowRank.Live(w.Prefix + name));
            var gate = Mlp("mlp.gate_proj").Forward(m);
            if (step.Sparsity?.Neurons(layer, h, () => gate) is not null)
                throw new NotSupportedException("MLP neuron sparsity over a low-rank (InRank) MLP is not supported; export it with 'tern export --dense' first.");
            return Mlp("mlp.down_proj").ForwardAdd(act.Apply(gate) * Mlp("mlp.up_proj").Forward(m), h);
        }
        var gateUp = w.Linear("mlp.gate_up_proj");
        // DejaVu: a neuron whose gate is silent adds nothing — its gate and up rows and its down column are skipped.
        if (step.Sparsity?.Neurons(layer, h, () => Linear.Apply(m, gateUp.Weight.narrow(0, 0, intermediate), gateUp.Bias?.narrow(0, 0, intermediate))) is { } neurons)
            return w.Linear("mlp.down_proj").ForwardColumnsAdd(gateUp.ForwardGatedRows(m, neurons, act, intermediate), neurons, h);
        return w.Linear("mlp.down_proj").ForwardAdd(act.Gated(gateUp.Forward(m), intermediate), h);
    }

    private protected override Tensor Head(PartWeights w, Tensor h, ModelStep step) =>
        Linear.Project(Norms.Rms(h, w["model.norm.weight"], eps), w["lm_head.weight"]);

    private protected override (string Up, string Down, bool Gated)? SparseMlpNames => ("mlp.gate_up_proj", "mlp.down_proj", true);

    private protected override void DisposeBuffers() => rotary.Dispose();
}
