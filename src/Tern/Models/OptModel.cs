using Tern.Checkpoints;
using Tern.Caching;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// OPT (Zhang et al. 2022): learned absolute positions with an offset of 2, LayerNorm before (or, for OPT-350m, after)
/// each sub-block (<c>do_layer_norm_before</c>), ReLU MLP, and optional <c>word_embed_proj_dim</c> projections between the
/// embedding width and the hidden width.
/// </summary>
internal sealed class OptModel : CausalLanguageModel
{
    const int PositionOffset = 2;
    sealed record Layer(Tensor AttnNormW, Tensor AttnNormB, Linear Qkv, Linear Output, Tensor MlpNormW, Tensor MlpNormB, Linear Fc1, Linear Fc2);

    readonly Tensor embed, positions, lmHead;
    readonly Linear? projectIn, projectOut;
    readonly Tensor? finalNormW, finalNormB;
    readonly Layer[] layers;
    readonly bool preNorm;
    readonly Activation act;
    readonly AttentionSettings attention;

    public OptModel(HfConfig c, WeightLoader w)
    {
        int vocab = c.RequireInt("vocab_size"), hidden = c.RequireInt("hidden_size"), nLayers = c.RequireInt("num_hidden_layers");
        int heads = c.RequireInt("num_attention_heads"), ffn = c.RequireInt("ffn_dim"), maxPos = c.RequireInt("max_position_embeddings");
        ModelShape.RequirePositive(c, ("hidden_size", hidden), ("num_attention_heads", heads), ("num_hidden_layers", nLayers), ("vocab_size", vocab), ("ffn_dim", ffn), ("max_position_embeddings", maxPos));
        ModelShape.RequireDivisible(c, "hidden_size", hidden, "num_attention_heads", heads);
        int proj = c.GetInt("word_embed_proj_dim") ?? hidden;
        bool bias = c.GetBool("enable_bias") ?? true;
        if (!(c.GetBool("layer_norm_elementwise_affine") ?? true))
            throw c.Error("layer_norm_elementwise_affine", "is false, which Tern does not support");
        preNorm = c.GetBool("do_layer_norm_before") ?? true;
        act = Activations.Get(c.GetString("activation_function") ?? "relu", c, "activation_function");
        attention = new AttentionSettings(heads, heads, hidden / heads);

        embed = w.Get("model.decoder.embed_tokens.weight", vocab, proj);
        positions = w.Get("model.decoder.embed_positions.weight", maxPos + PositionOffset, hidden);
        if (proj != hidden)
        {
            projectIn = w.Linear("model.decoder.project_in", hidden, proj, false);
            projectOut = w.Linear("model.decoder.project_out", proj, hidden, false);
        }
        layers = new Layer[nLayers];
        for (int i = 0; i < nLayers; i++)
        {
            string p = $"model.decoder.layers.{i}.";
            layers[i] = new Layer(
                w.Get(p + "self_attn_layer_norm.weight", hidden), w.Get(p + "self_attn_layer_norm.bias", hidden),
                w.Fused(new[] { p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj" }, new long[] { hidden, hidden, hidden }, hidden, bias),
                w.Linear(p + "self_attn.out_proj", hidden, hidden, bias),
                w.Get(p + "final_layer_norm.weight", hidden), w.Get(p + "final_layer_norm.bias", hidden),
                w.Linear(p + "fc1", ffn, hidden, bias), w.Linear(p + "fc2", hidden, ffn, bias));
        }
        // transformers keeps the final norm only for pre-norm models (and not when _remove_final_layer_norm is set).
        if (preNorm && !(c.GetBool("_remove_final_layer_norm") ?? false))
        {
            finalNormW = w.Get("model.decoder.final_layer_norm.weight", hidden);
            finalNormB = w.Get("model.decoder.final_layer_norm.bias", hidden);
        }
        lmHead = c.GetBool("tie_word_embeddings") ?? true ? embed : w.Get("lm_head.weight", vocab, proj);
        Info = new ModelInfo
        {
            ModelType = "opt", VocabSize = vocab, HiddenSize = hidden, Layers = nLayers, Heads = heads, KvHeads = heads,
            HeadDim = hidden / heads, MaxPositions = maxPos, LearnedPositions = true, ParameterCount = w.ParameterCount,
        };
    }

    protected override Tensor Run(ForwardBatch batch, KvCache cache)
    {
        var h = Embed(StageWeights(0), batch);
        for (int i = 0; i < layers.Length; i++)
        {
            var input = h;
            using var layerScope = torch.NewDisposeScope();
            h = Block(layers[i], h, batch, cache[i], cache.Policy);
            h.MoveToOuterDisposeScope();
            input.Dispose();
        }
        return Head(StageWeights(layers.Length + 1), h, batch);
    }

    const double Eps = 1e-5;

    /// <summary>Token embedding (+ project_in) plus learned positions; <paramref name="w"/> = [embed, positions, project_in].</summary>
    Tensor Embed(Tensor?[] w, ForwardBatch batch)
    {
        long b = batch.InputIds.shape[0], t = batch.InputIds.shape[1];
        var x = w[0]!.index_select(0, batch.InputIds.flatten()).view(b, t, -1);
        if (w[2] is { } projIn) x = new Linear(projIn, null).Forward(x);
        var pos = w[1]!.index_select(0, (batch.ModelPositions.clamp_min(0) + PositionOffset).flatten()).view(b, t, -1);
        return x + pos;
    }

    Tensor Block(Layer l, Tensor h, ForwardBatch batch, LayerKvCache cache, IKvCachePolicy policy)
    {
        long b = h.shape[0], t = h.shape[1];
        var a = preNorm ? Norms.Layer(h, l.AttnNormW, l.AttnNormB, Eps) : h;
        var qkv = l.Qkv.Forward(a).view(b, t, 3 * attention.Heads, attention.HeadDim);
        var attended = Attention.Forward(qkv.narrow(2, 0, attention.Heads), qkv.narrow(2, attention.Heads, attention.Heads),
            qkv.narrow(2, 2 * attention.Heads, attention.Heads), batch, cache, policy, attention);
        h = l.Output.ForwardAdd(attended, h);
        if (!preNorm) h = Norms.Layer(h, l.AttnNormW, l.AttnNormB, Eps);
        var m = preNorm ? Norms.Layer(h, l.MlpNormW, l.MlpNormB, Eps) : h;
        h = l.Fc2.ForwardAdd(act.Apply(l.Fc1.Forward(m)), h);
        if (!preNorm) h = Norms.Layer(h, l.MlpNormW, l.MlpNormB, Eps);
        return h;
    }

    /// <summary>Final norm, project_out, LM head; <paramref name="w"/> = [norm weight, norm bias, project_out, lm_head].</summary>
    Tensor Head(Tensor?[] w, Tensor h, ForwardBatch batch)
    {
        h = SelectOutputs(h, batch);
        if (w[0] is { } normW) h = Norms.Layer(h, normW, w[1], Eps);
        if (w[2] is { } projOut) h = new Linear(projOut, null).Forward(h);
        return Linear.Apply(h, w[3]!);
    }

    internal override Tensor?[] StageWeights(int stage)
    {
        if (stage == 0) return new[] { embed, positions, projectIn?.Weight };
        if (stage == layers.Length + 1) return new[] { finalNormW, finalNormB, projectOut?.Weight, lmHead };
        var l = layers[stage - 1];
        return new[] { l.AttnNormW, l.AttnNormB, l.Qkv.Weight, l.Qkv.Bias, l.Output.Weight, l.Output.Bias, l.MlpNormW, l.MlpNormB, l.Fc1.Weight, l.Fc1.Bias, l.Fc2.Weight, l.Fc2.Bias };
    }

    internal override Tensor RunStage(int stage, Tensor?[] w, Tensor? hidden, ForwardBatch batch, LayerKvCache? cache, IKvCachePolicy policy)
    {
        if (stage == 0) return Embed(w, batch);
        if (stage == layers.Length + 1) return Head(w, Required(hidden, stage), batch);
        var layer = new Layer(w[0]!, w[1]!, new Linear(w[2]!, w[3]), new Linear(w[4]!, w[5]), w[6]!, w[7]!, new Linear(w[8]!, w[9]), new Linear(w[10]!, w[11]));
        return Block(layer, Required(hidden, stage), batch, cache!, policy);
    }

    protected override void DisposeWeights()
    {
        if (!ReferenceEquals(lmHead, embed)) lmHead.Dispose();
        embed.Dispose(); positions.Dispose(); projectIn?.Dispose(); projectOut?.Dispose(); finalNormW?.Dispose(); finalNormB?.Dispose();
        foreach (var l in layers)
        {
            l.AttnNormW.Dispose(); l.AttnNormB.Dispose(); l.Qkv.Dispose(); l.Output.Dispose();
            l.MlpNormW.Dispose(); l.MlpNormB.Dispose(); l.Fc1.Dispose(); l.Fc2.Dispose();
        }
    }
}
