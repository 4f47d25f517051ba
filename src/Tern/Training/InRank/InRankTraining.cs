using System.Text.Json.Nodes;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Training.InRank;

/// <summary>
/// InRank in a <see cref="Trainer"/> run: the factored MLPs of a fresh model (config.json's <c>low_rank</c> section, Kaiming-
/// uniform factors), the rank check every <see cref="InRankOptions.CheckEvery"/> forward passes, the stage hand-off, and the
/// forward count a checkpoint keeps (<see cref="StateFile"/>) so a resumed run decides exactly as the interrupted one would have.
/// Every check and the hand-off append rows to <see cref="RankLog.FileName"/> in the run folder (<see cref="RankLog"/>).
/// </summary>
internal sealed class InRankTraining
{
    /// <summary>The checkpoint file with the forward count.</summary>
    public const string StateFile = "inrank-state.json";

    readonly InRankOptions options;
    readonly CausalLanguageModel model;
    readonly string logPath;

    InRankTraining(CausalLanguageModel model, InRankOptions options, string outputDirectory, long forwards)
    {
        this.model = model;
        this.options = options;
        logPath = Path.Combine(outputDirectory, RankLog.FileName);
        Forwards = forwards;
    }

    /// <summary>Forward passes counted so far (stage 1 only: stage 2 checks nothing).</summary>
    public long Forwards { get; private set; }

    LowRankLayout Layout => model.LowRank!;

    /// <summary>
    /// <paramref name="config"/> with a <c>low_rank</c> section for a fresh run: every MLP linear (out m, in n) allocated
    /// Rmax = ⌊min(m, n) · <see cref="InRankOptions.MaxRankFraction"/>⌋ (released: ⌊min(m, n)/2⌋) components at rank r0 (stage 1), or, with <see cref="InRankOptions.FixedRank"/>, that rank in stage 2.
    /// </summary>
    /// <exception cref="OptionException">The architecture has no factored MLPs, or a rank or buffer does not fit a layer.</exception>
    public static HfConfig Prepare(HfConfig config, InRankOptions options)
    {
        options.Validate();
        var mlp = CausalLanguageModel.MlpLinears(config) ?? throw new OptionException(
            $"{TernOption.InRank} factors the MLPs of Llama-family and GPT-2 models; '{config.ModelType}' ({config.Path}) is not supported yet.");
        var linears = new Dictionary<string, LowRankFactor>(StringComparer.Ordinal);
        foreach (var (name, outFeatures, inFeatures) in mlp.Linears)
        {
            int full = (int)Math.Min(outFeatures, inFeatures), maxRank = (int)(full * options.MaxRankFraction);
            if (options.FixedRank is { } rank)
            {
                if (rank > full) throw new OptionException($"{TernOption.InRankFixedRank} {rank} is above the full rank {full} of {name} [{outFeatures}×{inFeatures}].");
                linears[name] = new LowRankFactor { Rank = rank, Width = rank };
            }
            else
            {
                if (options.InitialRank + options.Buffer > maxRank)
                    throw new OptionException($"{TernOption.InRankInitialRank} {options.InitialRank} + {TernOption.InRankBuffer} {options.Buffer} exceed Rmax = {maxRank} ({options.MaxRankFraction:0.##} of the full rank) of {name} [{outFeatures}×{inFeatures}]; use a smaller buffer or a larger {TernOption.InRankMaxRankFraction} on this model.");
                linears[name] = new LowRankFactor { Rank = options.InitialRank, Width = maxRank };
            }
        }
        var layout = new LowRankLayout(options.Variant, options.FixedRank is null ? 1 : 2, options.FixedRank is null ? options.Buffer : 0, linears)
            { DenseTransposed = mlp.DenseTransposed };
        var json = config.Json.DeepClone().AsObject();
        json[LowRankLayout.ConfigKey] = layout.ToJson();
        return HfConfig.Parse(json.ToJsonString(), config.Path);
    }

    /// <summary>Starts InRank on a fresh model built from <see cref="Prepare"/>'s config: the factors are drawn again, as released,
    /// Kaiming-uniform (a = √5): A ~ U(±1/√n), B ~ U(±1/√width), times <see cref="InRankOptions.InitScale"/>; the original
    /// variant's W0 keeps the model's standard initialisation. Seeded by <paramref name="seed"/>, on the CPU (the same values on
    /// any device).</summary>
    public static InRankTraining Start(CausalLanguageModel model, InRankOptions options, long seed, string outputDirectory)
    {
        var layout = model.LowRank ?? throw new InvalidOperationException("the model has no low_rank section; build it from InRankTraining.Prepare's config.");
        using var noGrad = torch.no_grad();
        using var generator = new torch.Generator(unchecked((ulong)seed ^ 0x1A2B3C4D5E6F7788UL));
        foreach (var name in layout.Linears.Keys)
            foreach (string factor in new[] { ".weight_a", ".weight_b" })
            {
                using var scope = torch.NewDisposeScope();
                var p = Parameter(model, name + factor);
                double bound = options.InitScale / Math.Sqrt(p.size(1)); // fan_in: n for A [width, n], width for B [m, width]
                var values = (torch.rand(p.shape, ScalarType.Float64, generator: generator) * 2 - 1) * bound;
                p.copy_(values.to(p.dtype).to(p.device));
            }
        string log = Path.Combine(outputDirectory, RankLog.FileName);
        if (File.Exists(log)) File.Delete(log);
        if (layout.Stage == 1)
        {
            Directory.CreateDirectory(outputDirectory);
            RankLog.Append(log, layout.Linears.Select(l => RankLog.Start(l.Key, l.Value.Rank, layout.Live(l.Key))));
        }
        return new InRankTraining(model, options, outputDirectory, forwards: 0);
    }

    /// <summary>Continues InRank on a model loaded from <paramref name="checkpoint"/> (its config.json holds the layout, stage
    /// and ranks) at optimizer step <paramref name="step"/>: the forward count comes from the checkpoint, and log rows of
    /// later steps (computed again) are cut.</summary>
    public static InRankTraining Resume(CausalLanguageModel model, InRankOptions options, string checkpoint, string outputDirectory, int step)
    {
        if (model.LowRank is null) throw new TrainingCheckpointException($"{checkpoint}: config.json has no low_rank section, but the run's options ask for InRank.");
        string path = Path.Combine(checkpoint, StateFile);
        if (!File.Exists(path)) throw new TrainingCheckpointException($"{path}: missing; an InRank checkpoint records its forward count there.");
        long forwards = (long?)(JsonNode.Parse(File.ReadAllText(path))?["forwards"])
            ?? throw new TrainingCheckpointException($"{path}: no \"forwards\".");
        TrainingLog.TruncateAfter(Path.Combine(outputDirectory, RankLog.FileName), step);
        return new InRankTraining(model, options, outputDirectory, forwards);
    }

    /// <summary>Writes the forward count into a checkpoint folder being saved.</summary>
    public void SaveState(string directory) => AtomicFile.Write(Path.Combine(directory, StateFile),
        s => s.Write(System.Text.Encoding.UTF8.GetBytes(new JsonObject { ["forwards"] = Forwards }.ToJsonString() + "\n")));

    /// <summary>
    /// Called before every forward pass of the run (training micro-batches and validation batches, as the release counts):
    /// in stage 1, after <see cref="InRankOptions.Warmup"/> passes and then every <see cref="InRankOptions.CheckEvery"/>-th,
    /// every factored linear's rank is updated by <see cref="RankRule.NextRank"/> on the spectrum of its live product.
    /// </summary>
    /// <param name="step">The optimizer step the pass belongs to (logged).</param>
    public void BeforeForward(int step)
    {
        if (Layout.Stage != 1) return;
        Forwards++;
        if (Forwards <= options.Warmup || Forwards % options.CheckEvery != 0) return;
        using var noGrad = torch.no_grad();
        var rows = new List<JsonObject>();
        foreach (var (name, factor) in Layout.Linears)
        {
            long live = Layout.Live(name);
            double[] s;
            using (var scope = torch.NewDisposeScope())
                s = RankRule.Spectrum(Parameter(model, name + ".weight_b").narrow(1, 0, live), Parameter(model, name + ".weight_a").narrow(0, 0, live));
            var decision = RankRule.NextRank(s, factor.Rank, Layout.Buffer, factor.Width, options.Threshold);
            factor.Rank = decision.Rank;
            rows.Add(RankLog.Check(step, Forwards, name, decision, Layout.Live(name), s));
        }
        RankLog.Append(logPath, rows);
    }

    /// <summary>True when optimizer step <paramref name="step"/> has just ended stage 1.</summary>
    public bool HandOffDue(int step) => Layout.Stage == 1 && step == options.Stage1Steps;

    /// <summary>
    /// The stage hand-off: every factored linear's live product is truncated to its discovered rank (<see cref="RankRule.Truncate"/>),
    /// the model's factor parameters are replaced by the new [m, r] and [r, n] ones and the buffer is dropped (stage 2).
    /// </summary>
    /// <returns>The replaced parameters' names with their new rank (for the optimizer's moments).</returns>
    public IReadOnlyDictionary<string, int> HandOff(int step)
    {
        using var noGrad = torch.no_grad();
        var resized = new Dictionary<string, int>(StringComparer.Ordinal);
        var rows = new List<JsonObject>();
        foreach (var (name, factor) in Layout.Linears)
        {
            long live = Layout.Live(name);
            using (var scope = torch.NewDisposeScope())
            {
                var (a, b) = RankRule.Truncate(Parameter(model, name + ".weight_b").narrow(1, 0, live), Parameter(model, name + ".weight_a").narrow(0, 0, live), factor.Rank);
                model.ReplaceParameter(name + ".weight_a", a);
                model.ReplaceParameter(name + ".weight_b", b);
            }
            resized[name + ".weight_a"] = resized[name + ".weight_b"] = factor.Rank;
            factor.Width = factor.Rank;
            rows.Add(RankLog.HandOff(step, Forwards, name, factor.Rank));
        }
        Layout.Stage = 2;
        RankLog.Append(logPath, rows);
        return resized;
    }

    /// <summary>An Adam moment of a factor resized to <paramref name="rank"/> as released: A's first rows, B's first columns
    /// (a view of <paramref name="moment"/>); null under <see cref="MomentHandoff.Reset"/>.</summary>
    public Tensor? CarryMoment(string parameter, Tensor moment, int rank) => options.Moments == MomentHandoff.Reset ? null
        : parameter.EndsWith(".weight_a", StringComparison.Ordinal) ? moment.narrow(0, 0, rank) : moment.narrow(1, 0, rank);

    static Tensor Parameter(CausalLanguageModel model, string name) =>
        model.Parameters.FirstOrDefault(p => p.Name == name)?.Tensor ?? throw new KeyNotFoundException($"the model has no parameter '{name}'.");
}
