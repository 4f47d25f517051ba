using Tern.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Caching;

/// <summary>
/// A slow, separately written Llama for one sequence that never evicts anything: it keeps every token's keys (rotated at their original position) and
/// values, and attends through an explicit keep set per layer and KV head that its own eviction rule recomputes after each
/// step. Rotary positions are either the original ones or, for StreamingLLM, the index in the keep set — then keys are
/// rotated by RoPE composition: stored rotated at their original position p and turned by (index − p), the scheme Tern does
/// not use (it stores them unrotated), so agreement also proves the two schemes equal.
/// Only what the llama fixtures use: gated MLP, RMSNorm, rotary "default" or "linear", no biases, untied head.
/// </summary>
internal sealed class ReferenceLlama : IDisposable
{
    sealed record Layer(Tensor InNorm, Tensor Q, Tensor K, Tensor V, Tensor O, Tensor PostNorm, Tensor Gate, Tensor Up, Tensor Down);

    readonly Tensor embed, norm, head;
    readonly Layer[] layers;
    readonly int heads, kvHeads, dim;
    readonly bool relu;
    readonly double[] inverseFrequencies;
    readonly List<Tensor>[] keys, values; // per layer: per token [kvHeads, dim]; keys rotated at their original position
    readonly double[][][] scores;          // per layer, KV head: accumulated attention per token
    // TorchSharp leaves implicitly converted Scalars to the GC, which may finalize one during the native call that uses it
    // (dotnet/TorchSharp#1434); this loop runs ~10⁵ ops while other tests allocate, so it holds its Scalars itself.
    readonly Scalar one = 1.ToScalar(), epsilon, scale;

    public ReferenceLlama(string fixture, int maxTokens)
    {
        var config = HfConfig.Load(Fixtures.ModelDir(fixture));
        using var weights = CheckpointReader.Open(Fixtures.ModelDir(fixture));
        Tensor W(string name) => weights.LoadAsStored(name, ScalarType.Float32);
        heads = config.RequireInt("num_attention_heads");
        kvHeads = config.GetInt("num_key_value_heads") ?? heads;
        dim = config.GetInt("head_dim") ?? config.RequireInt("hidden_size") / heads;
        scale = (1 / Math.Sqrt(dim)).ToScalar();
        epsilon = (config.GetDouble("rms_norm_eps") ?? 1e-6).ToScalar();
        relu = config.GetString("hidden_act") == "relu";
        double factor = config.GetObject("rope_parameters")?["factor"]?.GetValue<double>() ?? 1.0;
        inverseFrequencies = Enumerable.Range(0, dim / 2).Select(i => 1.0 / Math.Pow(10000.0, 2.0 * i / dim) / factor).ToArray();
        int n = config.RequireInt("num_hidden_layers");
        embed = W("model.embed_tokens.weight");
        norm = W("model.norm.weight");
        head = W("lm_head.weight");
        layers = Enumerable.Range(0, n).Select(i =>
        {
            string p = $"model.layers.{i}.";
            return new Layer(W(p + "input_layernorm.weight"), W(p + "self_attn.q_proj.weight"), W(p + "self_attn.k_proj.weight"),
                W(p + "self_attn.v_proj.weight"), W(p + "self_attn.o_proj.weight"), W(p + "post_attention_layernorm.weight"),
                W(p + "mlp.gate_proj.weight"), W(p + "mlp.up_proj.weight"), W(p + "mlp.down_proj.weight"));
        }).ToArray();
        keys = Enumerable.Range(0, n).Select(_ => new List<Tensor>()).ToArray();
        values = Enumerable.Range(0, n).Select(_ => new List<Tensor>()).ToArray();
        scores = Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, kvHeads).Select(_ => new double[maxTokens]).ToArray()).ToArray();
        Kept = Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, kvHeads).Select(_ => new List<int>()).ToArray()).ToArray();
    }

    /// <summary>Per layer and KV head: the positions attended to, in order.</summary>
    public List<int>[][] Kept { get; }

    /// <summary>True: positions are keep-set indexes (StreamingLLM); false: original positions (H2O).</summary>
    public bool PositionsByIndex { get; init; }

    /// <summary>The eviction rule: given the layer, KV head, the kept positions and their scores, what stays.</summary>
    public required Func<int, int, List<int>, double[], List<int>> Evict { get; init; }

    int Length => keys[0].Count;

    /// <summary>Feeds tokens one at a time with nothing evicted, then applies the rule once (a step of several tokens is
    /// the dense prefill); returns the last token's logits [vocab].</summary>
    public float[] Step(IReadOnlyList<long> tokens)
    {
        float[] logits = [];
        foreach (long token in tokens) logits = Token(token);
        for (int l = 0; l < layers.Length; l++)
            for (int g = 0; g < kvHeads; g++) Kept[l][g] = Evict(l, g, Kept[l][g], scores[l][g]);
        return logits;
    }

    float[] Token(long token)
    {
        using var scope = torch.NewDisposeScope();
        int t = Length;
        var h = embed[token];                                           // [hidden]
        for (int l = 0; l < layers.Length; l++)
        {
            var w = layers[l];
            var x = Rms(h, w.InNorm);
            var q = w.Q.matmul(x).view(heads, dim);
            var k = w.K.matmul(x).view(kvHeads, dim);
            keys[l].Add(Rotate(k, Enumerable.Repeat(t, kvHeads).ToArray()).DetachFromDisposeScope());
            values[l].Add(w.V.matmul(x).view(kvHeads, dim).DetachFromDisposeScope());
            var output = new Tensor[heads];
            for (int g = 0; g < kvHeads; g++)
            {
                var kept = Kept[l][g];
                kept.Add(t);
                int queryPosition = PositionsByIndex ? kept.Count - 1 : t;
                // Key j sits at index i: turn its stored rotation R(j) by (i − j) when positions follow the keep set.
                var kk = torch.stack(kept.Select(j => keys[l][j][g]).ToArray());
                if (PositionsByIndex) kk = Rotate(kk, kept.Select((j, i) => i - j).ToArray());
                var vv = torch.stack(kept.Select(j => values[l][j][g]).ToArray());
                for (int r = 0; r < heads / kvHeads; r++)
                {
                    int qh = g * (heads / kvHeads) + r;
                    var p = torch.softmax(kk.matmul(Rotate(q[qh].unsqueeze(0), new[] { queryPosition }).squeeze(0)).mul(scale), 0);
                    var probabilities = p.data<float>().ToArray();
                    for (int i = 0; i < kept.Count; i++) scores[l][g][kept[i]] += probabilities[i];
                    output[qh] = p.matmul(vv);
                }
            }
            h = h.add(w.O.matmul(torch.cat(output)), one);
            var y = Rms(h, w.PostNorm);
            var gate = w.Gate.matmul(y);
            gate = relu ? torch.nn.functional.relu(gate) : torch.nn.functional.silu(gate);
            h = h.add(w.Down.matmul(gate * w.Up.matmul(y)), one);
        }
        return head.matmul(Rms(h, norm)).data<float>().ToArray();
    }

    Tensor Rms(Tensor x, Tensor weight) => x * (x * x).mean().add(epsilon, one).rsqrt() * weight;

    /// <summary>RoPE "rotate half" of rows x [n, dim], row i by position p[i]: x·cos(pθ) + rotate_half(x)·sin(pθ).</summary>
    Tensor Rotate(Tensor x, int[] p)
    {
        var angles = p.SelectMany(position => inverseFrequencies.Concat(inverseFrequencies).Select(f => position * f)).ToArray();
        var cos = torch.tensor(angles.Select(a => (float)Math.Cos(a)).ToArray(), new long[] { p.Length, dim });
        var sin = torch.tensor(angles.Select(a => (float)Math.Sin(a)).ToArray(), new long[] { p.Length, dim });
        var half = torch.cat(new[] { x.narrow(-1, dim / 2, dim / 2).neg(), x.narrow(-1, 0, dim / 2) }, -1);
        return (x * cos).add(half * sin, one);
    }

    public void Dispose()
    {
        foreach (var t in keys.Concat(values).SelectMany(x => x)) t.Dispose();
        foreach (var t in new[] { embed, norm, head }) t.Dispose();
        foreach (var x in new[] { one, epsilon, scale }) x.Dispose();
        foreach (var l in layers)
            foreach (var t in new[] { l.InNorm, l.Q, l.K, l.V, l.O, l.PostNorm, l.Gate, l.Up, l.Down }) t.Dispose();
    }
}
