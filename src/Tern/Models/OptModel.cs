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

        var embedding = w.Part("model.decoder.");
        var embed = embedding.Get("embed_tokens.weight", vocab, proj);
        embedding.Get("embed_positions.weight", maxPos + PositionOffset, hidden);
        if (proj != hidden) embedding.Linear("project_in", hidden, proj, false);
        var parts = new List<PartWeights> { embedding.Weights };
        for (int i = 0; i < nLayers; i++)
        {
            var p = w.Part($"model.decoder.layers.{i}.");
            p.Get("self_attn_layer_norm.weight", hidden);
            p.Get("self_attn_layer_norm.bias", hidden);
            p.Fused("self_attn.qkv_proj", new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj" }, new long[] { hidden, hidden, hidden }, hidden, bias);
            p.Linear("self_attn.out_proj", hidden, hidden, bias);
            p.Get("final_layer_norm.weight", hidden);
            p.Get("final_layer_norm.bias", hidden);
            p.Linear("fc1", ffn, hidden, bias);
            p.Linear("fc2", hidden, ffn, bias);
            parts.Add(p.Weights);
        }
        var head = w.Part("");
        // transformers keeps the final norm only for pre-norm models (and not when _remove_final_layer_norm is set).
        if (preNorm && !(c.GetBool("_remove_final_layer_norm") ?? false))
        {
            head.Get("model.decoder.final_layer_norm.weight", hidden);
            head.Get("model.decoder.final_layer_norm.bias", hidden);
        }
        if (proj != hidden) head.Linear("model.decoder.project_out", proj, hidden, false);
        if (c.GetBool("tie_word_embeddings") ?? true) head.Add("lm_head.weight", embed);
        else head.Get("lm_head.weight", vocab, proj);
        parts.Add(head.Weights);
        Parts = parts;
        Info = new ModelInfo
        {
            ModelType = "opt", VocabSize = vocab, HiddenSize = hidden, Layers = nLayers, Heads = heads, KvHeads = heads,
            HeadDim = hidden / heads, MaxPositions = maxPos, LearnedPositions = true, ParameterCount = w.ParameterCount,
        };
    }

    const double Eps = 1e-5;

    /// <summary>Token embedding (+ project_in) plus learned positions.</summary>
    private protected override Tensor Embed(PartWeights w, ModelStep step)
    {
        var batch = step.Batch;
        long b = batch.InputIds.size(0), t = batch.InputIds.size(1);
        var x = TokenEmbeddings(w, step);
        if (w.Optional("project_in.weight") is not null) x = w.Linear("project_in").Forward(x);
        var pos = w["embed_positions.weight"].index_select(0, (batch.ModelPositions.clamp_min(0) + PositionOffset).flatten()).view(b, t, -1);
        return x + pos;
    }

    private protected override Tensor Layer(int layer, PartWeights w, Tensor h, ModelStep step, LayerState cache)
    {
        long b = h.size(0), t = h.size(1);
        var (attnNormW, attnNormB) = (w["self_attn_layer_norm.weight"], w["self_attn_layer_norm.bias"]);
        var (mlpNormW, mlpNormB) = (w["final_layer_norm.weight"], w["final_layer_norm.bias"]);
        var a = preNorm ? Norms.Layer(h, attnNormW, attnNormB, Eps) : h;
        int heads = attention.Heads;
        if (Attention.KeptHeads(layer, h, step, cache) is { } kept)
        {
            // DejaVu's head-subset attention: the kept heads' queries and every key and value, attention of the kept heads.
            var columns = Attention.HeadColumns(kept, step, attention);
            var (queries, keysAndValues) = Attention.KeptQkv(w.Linear("self_attn.qkv_proj"), a, columns, attention);
            var keptOutputs = Attention.ForwardKept(queries, keysAndValues.narrow(2, 0, heads), keysAndValues.narrow(2, heads, heads), kept, step, cache, attention);
            h = Attention.ProjectKept(w.Linear("self_attn.out_proj"), keptOutputs, columns, h, attention);
        }
        else
        {
            var qkv = w.Linear("self_attn.qkv_proj").Forward(a).view(b, t, 3 * heads, attention.HeadDim);
            var attended = Attention.Forward(qkv.narrow(2, 0, heads), qkv.narrow(2, heads, heads), qkv.narrow(2, 2 * heads, heads), step, cache, attention);
            h = Attention.Project(w.Linear("self_attn.out_proj"), attended, h, layer, step, attention);
        }
        if (!preNorm) h = Norms.Layer(h, attnNormW, attnNormB, Eps);
        var m = preNorm ? Norms.Layer(h, mlpNormW, mlpNormB, Eps) : h;
        var fc1 = w.Linear("fc1");
        // DejaVu: only the neurons the step selects are computed (fc1 rows, fc2 columns); the others' ReLU would be 0.
        h = step.Sparsity?.Neurons(layer, h, () => fc1.Forward(m)) is { } neurons
            ? w.Linear("fc2").ForwardColumnsAdd(fc1.ForwardRows(m, neurons, act), neurons, h)
            : w.Linear("fc2").ForwardAdd(act.Apply(fc1.Forward(m)), h);
        if (!preNorm) h = Norms.Layer(h, mlpNormW, mlpNormB, Eps);
        return h;
    }

    private protected override (string Up, string Down, bool Gated)? SparseMlpNames => ("fc1", "fc2", false);

    /// <summary>Final norm, project_out, LM head.</summary>
    private protected override Tensor Head(PartWeights w, Tensor h, ModelStep step)
    {
        if (w.Optional("model.decoder.final_layer_norm.weight") is { } normW) h = Norms.Layer(h, normW, w["model.decoder.final_layer_norm.bias"], Eps);
        if (w.Optional("model.decoder.project_out.weight") is not null) h = w.Linear("model.decoder.project_out").Forward(h);
        return Linear.Project(h, w["lm_head.weight"]);
    }
}
