using System.Numerics;
using Tern.Caching;
using Tern.Checkpoints;
using Tern.Distillation;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Models.Hyena;

/// <summary>
/// A MultiHyena language model (Massaroli, Poli et al. 2023; safari's <c>SimpleLMHeadModel</c> layout): token embeddings,
/// pre-LayerNorm blocks of [MultiHyena mixer (<see cref="HyenaOperator"/>, order 2, M heads) + residual, MLP + residual], a final
/// LayerNorm and the tied LM head. config.json's <c>model_type</c> is <c>multihyena</c>; the mixer's fields are
/// <c>num_heads</c> (M), <c>filter_order</c> (F), <c>filter_emb_dim</c> (E), <c>filter_sine_freq</c>,
/// <c>filter_inner_layers</c>, <c>max_position_embeddings</c> (L_max, the filters' taps), with <c>short_filter_order</c> 3 and
/// <c>hyena_order</c> 2 the only values supported.
/// </summary>
/// <remarks>
/// Per sequence, each layer keeps the short conv's last two projected rows in the cache's <see cref="RecurrentState"/> and either
/// (undistilled) every past token's gated streams in its KV layer, an append-only cache stepped as filter-weighted linear
/// attention (<see cref="HyenaOperator.Cached"/>), or (distilled: a <c>distilled</c> section in config.json and
/// <see cref="ModalCheckpoint"/>'s files next to it) the complex modal state [M, N, N, S] of the recurrence
/// x_{t+1} = Λx_t + B u_t, y_t = Re(C x_t) + D u_t — constant memory and work per token, and no KV layers at all.
/// Either way the generator, teacher forcing and the serving pools step it through the same cache as a Transformer.
/// </remarks>
internal sealed class MultiHyenaModel : CausalLanguageModel
{
    /// <summary>config.json's section that marks a distilled model (its banks in <see cref="ModalCheckpoint.WeightsFile"/>).</summary>
    public const string DistilledKey = "distilled";

    readonly HyenaOptions mixer;
    readonly HyenaFilterBasis basis;
    readonly ModalRecurrence[]? recurrences;
    readonly Tensor?[] filters; // per layer, computed once for a model loaded for inference
    readonly bool trainable;
    readonly double eps;
    readonly Activation act;

    public MultiHyenaModel(HfConfig c, WeightLoader w)
    {
        int vocab = c.RequireInt("vocab_size"), hidden = c.RequireInt("hidden_size"), nLayers = c.RequireInt("num_hidden_layers");
        int heads = c.RequireInt("num_heads"), intermediate = c.GetInt("intermediate_size") ?? 4 * hidden;
        int maxLength = c.RequireInt("max_position_embeddings");
        ModelShape.RequirePositive(c, ("vocab_size", vocab), ("hidden_size", hidden), ("num_hidden_layers", nLayers), ("num_heads", heads),
            ("intermediate_size", intermediate), ("max_position_embeddings", maxLength));
        ModelShape.RequireDivisible(c, "hidden_size", hidden, "num_heads", heads);
        if ((c.GetInt("short_filter_order") ?? 3) != 3) throw c.Error("short_filter_order", "must be 3 (the short convolution Tern implements)");
        if ((c.GetInt("hyena_order") ?? 2) != 2) throw c.Error("hyena_order", "must be 2 (MultiHyena: one long convolution)");
        mixer = new HyenaOptions
        {
            Width = hidden, MaxLength = maxLength, Heads = heads, FilterWidth = c.GetInt("filter_order") ?? 64,
            EmbedDim = c.GetInt("filter_emb_dim") ?? 33, SineFrequency = c.GetDouble("filter_sine_freq") ?? 14,
            InnerLayers = c.GetInt("filter_inner_layers") ?? 2,
        };
        if (mixer.EmbedDim < 3 || mixer.EmbedDim % 2 == 0) throw c.Error("filter_emb_dim", $"must be odd and at least 3 (found {mixer.EmbedDim})");
        eps = c.GetDouble("layer_norm_epsilon") ?? 1e-5;
        act = Activations.Get(c.GetString("hidden_act") ?? "gelu", c, "hidden_act");
        trainable = w.Trainable;
        bool distilled = c.Has(DistilledKey);
        if (distilled && trainable)
            throw new CheckpointException($"{c.Path}: a distilled MultiHyena model runs its modal recurrence and cannot be trained; train the undistilled model, then 'tern distill hyena'.");
        // Fresh weights (a new run, or --dummy): the mixers take safari's initialisation rather than the generic normal(0, std).
        var fresh = w.Source is DummyWeightSource { Options.Kind: DummyWeightKind.Random } dummy ? dummy.Options : null;

        var embedding = w.Part("backbone.embeddings.");
        var embed = embedding.Get("word_embeddings.weight", vocab, hidden);
        var parts = new List<PartWeights> { embedding.Weights };
        for (int i = 0; i < nLayers; i++)
        {
            var p = w.Part($"backbone.layers.{i}.");
            p.Get("mixer_norm.weight", hidden);
            p.Get("mixer_norm.bias", hidden);
            Dictionary<string, Tensor>? init = null;
            if (fresh is not null)
                using (var generator = new torch.Generator((ulong)(fresh.Seed * 7919 + i))) init = HyenaOperator.InitialWeights(mixer, generator);
            foreach (var (name, shape) in HyenaOperator.WeightShapes(mixer))
            {
                var t = p.Get("mixer." + name, shape);
                if (init is not null) using (torch.no_grad()) t.copy_(init[name]);
            }
            if (init is not null) foreach (var t in init.Values) t.Dispose();
            p.Get("mlp_norm.weight", hidden);
            p.Get("mlp_norm.bias", hidden);
            p.Linear("mlp.fc1", intermediate, hidden, bias: true);
            p.Linear("mlp.fc2", hidden, intermediate, bias: true);
            parts.Add(p.Weights);
        }
        var head = w.Part("");
        head.Get("backbone.ln_f.weight", hidden);
        head.Get("backbone.ln_f.bias", hidden);
        if (c.GetBool("tie_word_embeddings") ?? true) head.Add("lm_head.weight", embed);
        else head.Get("lm_head.weight", vocab, hidden);
        parts.Add(head.Weights);
        Parts = parts;
        basis = HyenaFilterBasis.Create(mixer, w.DType, w.Device);
        filters = new Tensor?[nLayers];
        if (distilled) recurrences = LoadRecurrences(c, fresh, nLayers, w.Device);
        HasRecurrentLayers = true;
        Info = new ModelInfo
        {
            ModelType = c.ModelType, VocabSize = vocab, HiddenSize = hidden, Layers = nLayers, Heads = heads, KvHeads = heads,
            HeadDim = hidden / heads, MaxPositions = maxLength, LearnedPositions = true, ParameterCount = w.ParameterCount,
            CachesTokens = !distilled,
        };
    }

    /// <summary>True when the long convolutions run as distilled modal recurrences.</summary>
    public bool Distilled => recurrences is not null;

    /// <summary>The operator settings of every layer's mixer.</summary>
    public HyenaOptions Mixer => mixer;

    /// <summary>A layer's mixer over its weights (<paramref name="weights"/>: the layer's part).</summary>
    internal HyenaOperator Operator(PartWeights weights) => HyenaOperator.Over(mixer, name => weights["mixer." + name], basis);

    /// <summary>The operator of layer <paramref name="layer"/> of this model.</summary>
    public HyenaOperator Operator(int layer) => Operator(Parts[layer + 1]);

    /// <summary>The distilled banks of a model folder (refused, layer and filter named, when missing or unstable), or, for dummy
    /// weights, random stable banks of the section's <c>modes</c> (throughput work).</summary>
    ModalRecurrence[] LoadRecurrences(HfConfig c, DummyWeightOptions? dummy, int layers, Device device)
    {
        IReadOnlyDictionary<int, ModalFilters> banks;
        if (dummy is not null)
        {
            // "modes": S for every layer, or a distilled folder's list of S per layer.
            var node = c.GetObject(DistilledKey)?["modes"];
            int Modes(int layer) => node switch
            {
                System.Text.Json.Nodes.JsonArray list when layer < list.Count => list[layer]!.GetValue<int>(),
                System.Text.Json.Nodes.JsonValue one => one.GetValue<int>(),
                _ => 8,
            };
            banks = Enumerable.Range(0, layers).ToDictionary(l => l, l => RandomBank(mixer.Heads, Modes(l), new Random((int)dummy.Seed + l)));
        }
        else
        {
            string directory = Path.GetDirectoryName(Path.GetFullPath(c.Path))!;
            try
            {
                banks = ModalCheckpoint.Load(directory, Enumerable.Range(0, layers));
            }
            catch (InvalidDataException e)
            {
                throw new CheckpointException($"{c.Path}: the distilled filters do not load: {e.Message}");
            }
        }
        var recurrences = new ModalRecurrence[layers];
        for (int l = 0; l < layers; l++)
        {
            if (banks[l].Channels != mixer.Heads)
                throw new CheckpointException($"{c.Path}: layer {l}'s distilled bank has {banks[l].Channels} filters; the layer convolves {mixer.Heads} (one per head).");
            recurrences[l] = ModalRecurrence.Create(banks[l], device);
        }
        return recurrences;
    }

    static ModalFilters RandomBank(int channels, int modes, Random random)
    {
        var poles = new Complex[channels * modes];
        var residues = new Complex[channels * modes];
        for (int i = 0; i < poles.Length; i++)
        {
            poles[i] = Complex.FromPolarCoordinates(0.5 + 0.49 * random.NextDouble(), Math.PI * random.NextDouble());
            residues[i] = new Complex(random.NextDouble() - 0.5, random.NextDouble() - 0.5) * 0.1;
        }
        return ModalFilters.Create("dummy", modes, poles, residues);
    }

    private protected override string TokenTable => "word_embeddings.weight";

    /// <summary>Only the full cache: eviction or quantisation would drop or alter inputs the long convolution still weighs, and a
    /// distilled model holds no tokens at all.</summary>
    internal override void RequireCache(KvCacheConfig config)
    {
        if (config.Eviction is not DensePolicy || config.RollPositions)
            throw new OptionException($"{TernOption.KvPolicy} {config.Eviction.Name} evicts cached tokens, but a MultiHyena model's long convolution weighs every past token (or, distilled, keeps no tokens at all); run it with the full cache.");
        if (config.Bits != 16)
            throw new OptionException($"{TernOption.KvBits} {config.Bits} quantises cached tokens; a MultiHyena model's cache holds its convolution's exact inputs (distilled: none); run it with 16 bits.");
    }

    /// <summary>The short conv's tail per layer, and the modal state when distilled (then no KV layers).</summary>
    private protected override KvCacheOptions CacheShape(KvCacheOptions options, KvCacheConfig config)
    {
        int d = mixer.Width, n = mixer.Width / mixer.Heads;
        var state = new List<RecurrentTensor>();
        for (int l = 0; l < Info.Layers; l++)
        {
            state.Add(new RecurrentTensor($"layers.{l}.fir", new long[] { 3L * d, 2 }, options.DType));
            if (recurrences is { } r)
                state.Add(new RecurrentTensor($"layers.{l}.modal", new long[] { mixer.Heads, n, n, r[l].Filters.Modes }, r[l].StateType));
        }
        return options with { Layers = Distilled ? 0 : options.Layers, Recurrent = state };
    }

    private protected override Tensor Embed(PartWeights w, ModelStep step) => TokenEmbeddings(w, step);

    private protected override Tensor Layer(int layer, PartWeights w, Tensor h, ModelStep step, LayerState cache)
    {
        var state = cache.Recurrent ?? throw new NotSupportedException("a MultiHyena layer steps through one cache (its recurrent state); steps over several caches are not supported.");
        var op = Operator(w);
        var x = Norms.Layer(h, w["mixer_norm.weight"], w["mixer_norm.bias"], eps);
        var fir = state[$"layers.{layer}.fir"];
        var mixed = recurrences is { } r
            ? op.Stepped(x, fir, state[$"layers.{layer}.modal"], r[layer], step.Batch.Positions)
            : op.Cached(x, fir, cache.Cache!, step.Batch, Filters(layer, op));
        h = h + mixed;
        var m = Norms.Layer(h, w["mlp_norm.weight"], w["mlp_norm.bias"], eps);
        return w.Linear("mlp.fc2").ForwardAdd(act.Apply(w.Linear("mlp.fc1").Forward(m)), h);
    }

    /// <summary>Layer <paramref name="layer"/>'s long filters [M, L_max]: recomputed from the weights at every step while they train,
    /// computed once otherwise.</summary>
    Tensor Filters(int layer, HyenaOperator op)
    {
        if (trainable) return op.Filters(mixer.MaxLength)[0];
        if (filters[layer] is null)
            using (torch.no_grad()) filters[layer] = op.Filters(mixer.MaxLength)[0].DetachFromDisposeScope();
        return filters[layer]!;
    }

    private protected override Tensor Head(PartWeights w, Tensor h, ModelStep step) =>
        Linear.Project(Norms.Layer(h, w["backbone.ln_f.weight"], w["backbone.ln_f.bias"], eps), w["lm_head.weight"]);

    private protected override void DisposeBuffers()
    {
        basis.Dispose();
        foreach (var f in filters) f?.Dispose();
        foreach (var r in recurrences ?? Array.Empty<ModalRecurrence>()) r.Dispose();
    }
}
