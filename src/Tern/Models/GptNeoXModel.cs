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
    sealed record Layer(Tensor Ln1W, Tensor Ln1B, Linear Qkv, Linear Dense, Tensor Ln2W, Tensor Ln2B, Linear Up, Linear Down);

    readonly Tensor embed, finalW, finalB, lmHead;
    readonly Layer[] layers;
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
        // Row r of the per-head layout [head][q|k|v][dim] goes to [q|k|v][head][dim].
        var order = torch.arange(3L * hidden).view(heads, 3, headDim).transpose(0, 1).reshape(-1).to(w.WeightDevice);
        embed = w.Get("gpt_neox.embed_in.weight", vocab, hidden);
        layers = new Layer[nLayers];
        for (int i = 0; i < nLayers; i++)
        {
            string p = $"gpt_neox.layers.{i}.";
            var qkv = w.Linear(p + "attention.query_key_value", 3 * hidden, hidden, bias);
            var reordered = new Linear(qkv.Weight.index_select(0, order).DetachFromDisposeScope(), qkv.Bias?.index_select(0, order).DetachFromDisposeScope());
            qkv.Dispose();
            layers[i] = new Layer(
                w.Get(p + "input_layernorm.weight", hidden), w.Get(p + "input_layernorm.bias", hidden), reordered,
                w.Linear(p + "attention.dense", hidden, hidden, bias),
                w.Get(p + "post_attention_layernorm.weight", hidden), w.Get(p + "post_attention_layernorm.bias", hidden),
                w.Linear(p + "mlp.dense_h_to_4h", inter, hidden, true), w.Linear(p + "mlp.dense_4h_to_h", hidden, inter, true));
        }
        order.Dispose();
        finalW = w.Get("gpt_neox.final_layer_norm.weight", hidden);
        finalB = w.Get("gpt_neox.final_layer_norm.bias", hidden);
        lmHead = c.GetBool("tie_word_embeddings") ?? false ? embed : w.Get("embed_out.weight", vocab, hidden);
        rotary = new RotaryEmbedding(RopeSettings.FromConfig(c), headDim, w.Device, w.DType);
        Info = new ModelInfo
        {
            ModelType = "gpt_neox", VocabSize = vocab, HiddenSize = hidden, Layers = nLayers, Heads = heads, KvHeads = heads,
            HeadDim = headDim, MaxPositions = c.GetInt("max_position_embeddings") ?? 2048, LearnedPositions = false,
            ParameterCount = w.ParameterCount,
        };
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
            input.Dispose();
        }
        return Head(finalW, finalB, lmHead, h, batch);
    }

    static Tensor Embed(Tensor embed, ForwardBatch batch) =>
        embed.index_select(0, batch.InputIds.flatten()).view(batch.InputIds.shape[0], batch.InputIds.shape[1], -1);

    Tensor Block(Layer l, Tensor h, ForwardBatch batch, RotaryEmbedding.RotaryStep rope, LayerKvCache cache, IKvCachePolicy policy)
    {
        long b = h.shape[0], t = h.shape[1];
        int heads = attention.Heads;
        var qkv = l.Qkv.Forward(Norms.Layer(h, l.Ln1W, l.Ln1B, eps)).view(b, t, 3 * heads, attention.HeadDim);
        var (q, k, cachedKeys) = rope.QueryKey(qkv, heads, heads, policy.PositionsFollowCache);
        var attended = Attention.Forward(q, k, qkv.narrow(2, 2 * heads, heads), batch, cache, policy, attention, cachedKeys);
        var attnOut = l.Dense.Forward(attended);
        if (parallel) return h + attnOut + l.Down.Forward(act.Apply(l.Up.Forward(Norms.Layer(h, l.Ln2W, l.Ln2B, eps))));
        h = h + attnOut;
        return h + l.Down.Forward(act.Apply(l.Up.Forward(Norms.Layer(h, l.Ln2W, l.Ln2B, eps))));
    }

    Tensor Head(Tensor normW, Tensor normB, Tensor head, Tensor h, ForwardBatch batch) =>
        Linear.Apply(Norms.Layer(SelectOutputs(h, batch), normW, normB, eps), head);

    internal override Tensor?[] StageWeights(int stage)
    {
        if (stage == 0) return new[] { embed };
        if (stage == layers.Length + 1) return new[] { finalW, finalB, lmHead };
        var l = layers[stage - 1];
        return new[] { l.Ln1W, l.Ln1B, l.Qkv.Weight, l.Qkv.Bias, l.Dense.Weight, l.Dense.Bias, l.Ln2W, l.Ln2B, l.Up.Weight, l.Up.Bias, l.Down.Weight, l.Down.Bias };
    }

    internal override Tensor RunStage(int stage, Tensor?[] w, Tensor? hidden, ForwardBatch batch, LayerKvCache? cache, IKvCachePolicy policy)
    {
        if (stage == 0) return Embed(w[0]!, batch);
        if (stage == layers.Length + 1) return Head(w[0]!, w[1]!, w[2]!, Required(hidden, stage), batch);
        var layer = new Layer(w[0]!, w[1]!, new Linear(w[2]!, w[3]), new Linear(w[4]!, w[5]), w[6]!, w[7]!, new Linear(w[8]!, w[9]), new Linear(w[10]!, w[11]));
        return Block(layer, Required(hidden, stage), batch, rotary.ForBatch(batch), cache!, policy);
    }

    protected override void DisposeWeights()
    {
        if (!ReferenceEquals(lmHead, embed)) lmHead.Dispose();
        embed.Dispose(); finalW.Dispose(); finalB.Dispose(); rotary.Dispose();
        foreach (var l in layers)
        {
            l.Ln1W.Dispose(); l.Ln1B.Dispose(); l.Qkv.Dispose(); l.Dense.Dispose(); l.Ln2W.Dispose(); l.Ln2B.Dispose(); l.Up.Dispose(); l.Down.Dispose();
        }
    }
}
