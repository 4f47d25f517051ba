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
    sealed record Layer(Tensor Ln1W, Tensor Ln1B, Linear Qkv, Linear Proj, Tensor Ln2W, Tensor Ln2B, Linear Fc, Linear FcProj, AttentionSettings Attention);

    readonly Tensor wte, wpe, lnFW, lnFB, lmHead;
    readonly Layer[] layers;
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

        if (w.Trainable)
            throw new NotSupportedException("training GPT-2 (its Conv1D weights are transposed at load) is not supported yet: the trained tensor would not be the one in the checkpoint; train a Llama-family or OPT model.");
        Linear Conv1D(string prefix, long inF, long outF)
        {
            var weight = w.Get(prefix + ".weight", inF, outF);
            var transposed = weight.t().contiguous().DetachFromDisposeScope();
            weight.Dispose();
            return new Linear(transposed, w.Get(prefix + ".bias", outF));
        }

        wte = w.Get("transformer.wte.weight", vocab, hidden);
        wpe = w.Get("transformer.wpe.weight", maxPos, hidden);
        layers = new Layer[nLayers];
        for (int i = 0; i < nLayers; i++)
        {
            string p = $"transformer.h.{i}.";
            double scale = (scaleWeights ? 1.0 : Math.Sqrt(headDim)) / (byLayer ? i + 1 : 1);
            layers[i] = new Layer(
                w.Get(p + "ln_1.weight", hidden), w.Get(p + "ln_1.bias", hidden),
                Conv1D(p + "attn.c_attn", hidden, 3 * hidden), Conv1D(p + "attn.c_proj", hidden, hidden),
                w.Get(p + "ln_2.weight", hidden), w.Get(p + "ln_2.bias", hidden),
                Conv1D(p + "mlp.c_fc", hidden, inner), Conv1D(p + "mlp.c_proj", inner, hidden),
                new AttentionSettings(heads, heads, headDim) { QueryScale = scale });
        }
        lnFW = w.Get("transformer.ln_f.weight", hidden);
        lnFB = w.Get("transformer.ln_f.bias", hidden);
        lmHead = c.GetBool("tie_word_embeddings") ?? true ? wte : w.Get("lm_head.weight", vocab, hidden);
        Info = new ModelInfo
        {
            ModelType = "gpt2", VocabSize = vocab, HiddenSize = hidden, Layers = nLayers, Heads = heads, KvHeads = heads,
            HeadDim = headDim, MaxPositions = maxPos, LearnedPositions = true, ParameterCount = w.ParameterCount,
        };
    }

    protected override Tensor Run(ForwardBatch batch, KvCache cache)
    {
        var h = Embed(wte, wpe, batch);
        for (int i = 0; i < layers.Length; i++)
        {
            var input = h;
            using var layerScope = torch.NewDisposeScope();
            h = Block(layers[i], h, batch, cache[i], cache.Policy);
            h.MoveToOuterDisposeScope();
            input.Dispose();
        }
        return Head(lnFW, lnFB, lmHead, h, batch);
    }

    static Tensor Embed(Tensor wte, Tensor wpe, ForwardBatch batch)
    {
        long b = batch.InputIds.shape[0], t = batch.InputIds.shape[1];
        return wte.index_select(0, batch.InputIds.flatten()).view(b, t, -1)
             + wpe.index_select(0, batch.ModelPositions.clamp_min(0).flatten()).view(b, t, -1);
    }

    Tensor Block(Layer l, Tensor h, ForwardBatch batch, LayerKvCache cache, IKvCachePolicy policy)
    {
        long b = h.shape[0], t = h.shape[1];
        var s = l.Attention;
        var qkv = l.Qkv.Forward(Norms.Layer(h, l.Ln1W, l.Ln1B, eps)).view(b, t, 3 * s.Heads, s.HeadDim);
        var attended = Attention.Forward(qkv.narrow(2, 0, s.Heads), qkv.narrow(2, s.Heads, s.Heads), qkv.narrow(2, 2 * s.Heads, s.Heads),
            batch, cache, policy, s);
        h = l.Proj.ForwardAdd(attended, h);
        return l.FcProj.ForwardAdd(act.Apply(l.Fc.Forward(Norms.Layer(h, l.Ln2W, l.Ln2B, eps))), h);
    }

    Tensor Head(Tensor normW, Tensor normB, Tensor head, Tensor h, ForwardBatch batch) =>
        Linear.Apply(Norms.Layer(SelectOutputs(h, batch), normW, normB, eps), head);

    internal override Tensor?[] StageWeights(int stage)
    {
        if (stage == 0) return new[] { wte, wpe };
        if (stage == layers.Length + 1) return new[] { lnFW, lnFB, lmHead };
        var l = layers[stage - 1];
        return new[] { l.Ln1W, l.Ln1B, l.Qkv.Weight, l.Qkv.Bias, l.Proj.Weight, l.Proj.Bias, l.Ln2W, l.Ln2B, l.Fc.Weight, l.Fc.Bias, l.FcProj.Weight, l.FcProj.Bias };
    }

    internal override Tensor RunStage(int stage, Tensor?[] w, Tensor? hidden, ForwardBatch batch, LayerKvCache? cache, IKvCachePolicy policy)
    {
        if (stage == 0) return Embed(w[0]!, w[1]!, batch);
        if (stage == layers.Length + 1) return Head(w[0]!, w[1]!, w[2]!, Required(hidden, stage), batch);
        var layer = new Layer(w[0]!, w[1]!, new Linear(w[2]!, w[3]), new Linear(w[4]!, w[5]), w[6]!, w[7]!, new Linear(w[8]!, w[9]), new Linear(w[10]!, w[11]),
            layers[stage - 1].Attention);
        return Block(layer, Required(hidden, stage), batch, cache!, policy);
    }

    protected override void DisposeWeights()
    {
        if (!ReferenceEquals(lmHead, wte)) lmHead.Dispose();
        wte.Dispose(); wpe.Dispose(); lnFW.Dispose(); lnFB.Dispose();
        foreach (var l in layers)
        {
            l.Ln1W.Dispose(); l.Ln1B.Dispose(); l.Qkv.Dispose(); l.Proj.Dispose(); l.Ln2W.Dispose(); l.Ln2B.Dispose(); l.Fc.Dispose(); l.FcProj.Dispose();
        }
    }
}
