using Tern.Checkpoints;
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

    protected override Tensor Run(ForwardBatch batch, KvCache.KvCache cache)
    {
        long b = batch.InputIds.shape[0], t = batch.InputIds.shape[1];
        var h = wte.index_select(0, batch.InputIds.flatten()).view(b, t, -1)
              + wpe.index_select(0, batch.ModelPositions.clamp_min(0).flatten()).view(b, t, -1);
        for (int i = 0; i < layers.Length; i++)
        {
            var l = layers[i];
            var s = l.Attention;
            var input = h;
            using var layerScope = torch.NewDisposeScope();
            var qkv = l.Qkv.Forward(Norms.Layer(h, l.Ln1W, l.Ln1B, eps)).view(b, t, 3 * s.Heads, s.HeadDim);
            var attended = Attention.Forward(qkv.narrow(2, 0, s.Heads), qkv.narrow(2, s.Heads, s.Heads), qkv.narrow(2, 2 * s.Heads, s.Heads),
                batch, cache[i], cache.Policy, s);
            h = l.Proj.ForwardAdd(attended, h);
            h = l.FcProj.ForwardAdd(act.Apply(l.Fc.Forward(Norms.Layer(h, l.Ln2W, l.Ln2B, eps))), h);
            h.MoveToOuterDisposeScope();
            input.Dispose();
        }
        return Linear.Apply(Norms.Layer(SelectOutputs(h, batch), lnFW, lnFB, eps), lmHead);
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
