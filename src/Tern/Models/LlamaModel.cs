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
    sealed record Layer(Tensor InputNorm, Linear Qkv, Linear Output, Tensor PostNorm, Linear GateUp, Linear Down, AttentionSettings Attention);

    readonly Tensor embed, finalNorm, lmHead;
    readonly bool tied;
    readonly Layer[] layers;
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

        embed = w.Get("model.embed_tokens.weight", vocab, hidden);
        layers = new Layer[nLayers];
        for (int i = 0; i < nLayers; i++)
        {
            string p = $"model.layers.{i}.";
            var settings = new AttentionSettings(heads, kvHeads, headDim) { SlidingWindow = windows[i] };
            layers[i] = new Layer(
                w.Get(p + "input_layernorm.weight", hidden),
                w.Fused(new[] { p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj" },
                    new long[] { heads * headDim, kvHeads * headDim, kvHeads * headDim }, hidden, qkvBias),
                w.Linear(p + "self_attn.o_proj", hidden, heads * headDim, outBias),
                w.Get(p + "post_attention_layernorm.weight", hidden),
                w.Fused(new[] { p + "mlp.gate_proj", p + "mlp.up_proj" }, new long[] { intermediate, intermediate }, hidden, mlpBias),
                w.Linear(p + "mlp.down_proj", hidden, intermediate, mlpBias),
                settings);
        }
        finalNorm = w.Get("model.norm.weight", hidden);
        tied = c.GetBool("tie_word_embeddings") ?? false; // as transformers: a saved lm_head is ignored when tied
        lmHead = tied ? embed : w.Get("lm_head.weight", vocab, hidden);
        rotary = new RotaryEmbedding(RopeSettings.FromConfig(c), headDim, w.Device, w.DType);
        Info = new ModelInfo
        {
            ModelType = type, VocabSize = vocab, HiddenSize = hidden, Layers = nLayers, Heads = heads, KvHeads = kvHeads,
            HeadDim = headDim, MaxPositions = c.GetInt("max_position_embeddings") ?? 2048, LearnedPositions = false,
            ParameterCount = w.ParameterCount,
        };
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

    protected override Tensor Run(ForwardBatch batch, KvCache cache)
    {
        var h = Embed(embed, batch);
        var rope = rotary.ForBatch(batch);
        for (int i = 0; i < layers.Length; i++)
        {
            var input = h;
            using var layerScope = torch.NewDisposeScope();
            h = Block(layers[i], h, batch, rope, cache[i], cache.Policy);
            h.MoveToOuterDisposeScope();
            input.Dispose(); // free each layer's input now rather than at the end of the step
        }
        return Head(finalNorm, lmHead, h, batch);
    }

    static Tensor Embed(Tensor embed, ForwardBatch batch) =>
        embed.index_select(0, batch.InputIds.flatten()).view(batch.InputIds.shape[0], batch.InputIds.shape[1], -1);

    Tensor Block(Layer layer, Tensor h, ForwardBatch batch, RotaryEmbedding.RotaryStep rope, LayerKvCache cache, IKvCachePolicy policy)
    {
        long b = h.shape[0], t = h.shape[1];
        var s = layer.Attention;
        var qkv = layer.Qkv.Forward(Norms.Rms(h, layer.InputNorm, eps)).view(b, t, s.Heads + 2 * s.KvHeads, s.HeadDim);
        var (q, k, cachedKeys) = rope.QueryKey(qkv, s.Heads, s.KvHeads, policy.PositionsFollowCache);
        var attended = Attention.Forward(q, k, qkv.narrow(2, s.Heads + s.KvHeads, s.KvHeads), batch, cache, policy, s, cachedKeys);
        h = layer.Output.ForwardAdd(attended, h);
        var gateUp = layer.GateUp.Forward(Norms.Rms(h, layer.PostNorm, eps));
        return layer.Down.ForwardAdd(act.Gated(gateUp, intermediate), h);
    }

    Tensor Head(Tensor norm, Tensor head, Tensor h, ForwardBatch batch) => Linear.Apply(Norms.Rms(SelectOutputs(h, batch), norm, eps), head);

    internal override Tensor?[] StageWeights(int stage)
    {
        if (stage == 0) return new[] { embed };
        if (stage == layers.Length + 1) return new[] { finalNorm, lmHead };
        var l = layers[stage - 1];
        return new[] { l.InputNorm, l.Qkv.Weight, l.Qkv.Bias, l.Output.Weight, l.Output.Bias, l.PostNorm, l.GateUp.Weight, l.GateUp.Bias, l.Down.Weight, l.Down.Bias };
    }

    internal override Tensor RunStage(int stage, Tensor?[] w, Tensor? hidden, ForwardBatch batch, LayerKvCache? cache, IKvCachePolicy policy)
    {
        if (stage == 0) return Embed(w[0]!, batch);
        if (stage == layers.Length + 1) return Head(w[0]!, w[1]!, Required(hidden, stage), batch);
        var layer = new Layer(w[0]!, new Linear(w[1]!, w[2]), new Linear(w[3]!, w[4]), w[5]!, new Linear(w[6]!, w[7]), new Linear(w[8]!, w[9]),
            layers[stage - 1].Attention);
        return Block(layer, Required(hidden, stage), batch, rotary.ForBatch(batch), cache!, policy);
    }

    protected override void DisposeWeights()
    {
        embed.Dispose();
        finalNorm.Dispose();
        if (!tied) lmHead.Dispose();
        foreach (var l in layers)
        {
            l.InputNorm.Dispose(); l.Qkv.Dispose(); l.Output.Dispose(); l.PostNorm.Dispose(); l.GateUp.Dispose(); l.Down.Dispose();
        }
        rotary.Dispose();
    }
}
