using System.Text.Json.Nodes;
using Tern.Models;
using Tern.Runtime;

namespace Tern.Training.InRank;

/// <summary>What happens to the Adam moments of a factor when the stage hand-off re-factorises it.</summary>
public enum MomentHandoff
{
    /// <summary>As released: the moments are sliced to the new shape (their coordinates no longer match the rotated factors).</summary>
    Slice,
    /// <summary>The factors' moments (and Adam step counts) start again from zero; the other parameters keep theirs.</summary>
    Reset,
}

/// <summary>
/// InRank (Zhao et al. 2023, InRank-Efficient as released): every MLP linear map is trained as a product W = B·A whose live
/// rank grows by the explained-variance rule during a first stage, then is truncated to the discovered rank and trained at that
/// fixed rank. Defaults are the release's. <see cref="FixedRank"/> instead trains the product at one rank throughout (the
/// fixed-rank control).
/// </summary>
public sealed record InRankOptions
{
    /// <summary>W = B·A (released) or W = W0 + B·A with W0 frozen (the paper's original form).</summary>
    public LowRankVariant Variant { get; init; } = LowRankVariant.Efficient;
    /// <summary>Rank r0 at the start (<c>init_modes</c>).</summary>
    public int InitialRank { get; init; } = 2;
    /// <summary>Components live past the rank in stage 1, b (<c>buffer_modes</c>); the rank is capped at Rmax − b.</summary>
    public int Buffer { get; init; } = 100;
    /// <summary>Rmax, the components allocated in stage 1, as a fraction of the full rank min(m, n) (released: ½). The rank is
    /// capped at Rmax − b: raising the fraction shows where the rule would stop on its own.</summary>
    public double MaxRankFraction { get; init; } = 0.5;
    /// <summary>Explained-variance threshold α.</summary>
    public double Threshold { get; init; } = 0.9;
    /// <summary>Forward passes before the first rank check.</summary>
    public int Warmup { get; init; } = 200;
    /// <summary>A rank check every this many forward passes (<c>gap_iter</c>; training micro-batches and validation batches
    /// both count, as released).</summary>
    public int CheckEvery { get; init; } = 25;
    /// <summary>Optimizer steps of stage 1 (rank discovery); after the last one the factors are truncated (the release's GPT-2
    /// configs: 130).</summary>
    public int Stage1Steps { get; init; } = 130;
    /// <summary>Multiplies the Kaiming-uniform initial factors (<c>init_scale</c>).</summary>
    public double InitScale { get; init; } = 1.0;
    /// <summary>Adam moments of the factors at the hand-off.</summary>
    public MomentHandoff Moments { get; init; } = MomentHandoff.Slice;
    /// <summary>When set, no rank discovery: every MLP linear is B·A at this rank from the first step (the fixed-rank control).</summary>
    public int? FixedRank { get; init; }

    /// <summary>The options as the run config's <c>inrank</c> object.</summary>
    public JsonObject ToJson() => new()
    {
        ["variant"] = Variant.ToString().ToLowerInvariant(), ["initial_rank"] = InitialRank, ["buffer"] = Buffer, ["max_rank_fraction"] = MaxRankFraction, ["threshold"] = Threshold,
        ["warmup"] = Warmup, ["check_every"] = CheckEvery, ["stage1_steps"] = Stage1Steps, ["init_scale"] = InitScale,
        ["moments"] = Moments.ToString().ToLowerInvariant(), ["fixed_rank"] = FixedRank,
    };

    /// <summary>Options from a run config's <c>inrank</c> object (any subset of <see cref="ToJson"/>'s keys; the others keep
    /// the defaults). Errors name the file and key.</summary>
    public static InRankOptions FromJson(JsonNode node, string path)
    {
        if (node is not JsonObject json) throw new ArgumentException($"{path}: \"inrank\" must be an object (keys: {string.Join(", ", new InRankOptions().ToJson().Select(kv => kv.Key))}).");
        var o = new InRankOptions();
        foreach (var (key, value) in json)
        {
            T Get<T>()
            {
                try { return value is null ? default! : value.GetValue<T>(); }
                catch (Exception e) when (e is FormatException or InvalidOperationException)
                { throw new ArgumentException($"{path}: \"inrank.{key}\" must be a {typeof(T).Name} (got {value?.ToJsonString()})."); }
            }
            TEnum Enum<TEnum>() where TEnum : struct, Enum => System.Enum.TryParse<TEnum>(Get<string>(), true, out var v) ? v
                : throw new ArgumentException($"{path}: \"inrank.{key}\" must be one of {string.Join(", ", System.Enum.GetNames<TEnum>()).ToLowerInvariant()}.");
            o = key switch
            {
                "variant" => o with { Variant = Enum<LowRankVariant>() }, "initial_rank" => o with { InitialRank = Get<int>() },
                "buffer" => o with { Buffer = Get<int>() }, "max_rank_fraction" => o with { MaxRankFraction = Get<double>() },
                "threshold" => o with { Threshold = Get<double>() },
                "warmup" => o with { Warmup = Get<int>() }, "check_every" => o with { CheckEvery = Get<int>() },
                "stage1_steps" => o with { Stage1Steps = Get<int>() }, "init_scale" => o with { InitScale = Get<double>() },
                "moments" => o with { Moments = Enum<MomentHandoff>() }, "fixed_rank" => o with { FixedRank = Get<int?>() },
                _ => throw new ArgumentException($"{path}: unknown key \"inrank.{key}\" (known: {string.Join(", ", o.ToJson().Select(kv => kv.Key))})."),
            };
        }
        return o;
    }

    /// <summary>Throws <see cref="OptionException"/> naming the first invalid option.</summary>
    public void Validate()
    {
        if (InitialRank < 1) throw new OptionException($"{TernOption.InRankInitialRank} must be at least 1 (got {InitialRank}).");
        if (Buffer < 1) throw new OptionException($"{TernOption.InRankBuffer} must be at least 1 (got {Buffer}).");
        if (!(MaxRankFraction is > 0 and <= 1)) throw new OptionException($"{TernOption.InRankMaxRankFraction} must be in (0, 1] (got {MaxRankFraction}).");
        if (!(Threshold is > 0 and < 1)) throw new OptionException($"{TernOption.InRankThreshold} must be in (0, 1) (got {Threshold}).");
        if (Warmup < 0) throw new OptionException($"{TernOption.InRankWarmup} must not be negative (got {Warmup}).");
        if (CheckEvery < 1) throw new OptionException($"{TernOption.InRankCheckEvery} must be at least 1 (got {CheckEvery}).");
        if (Stage1Steps < 1) throw new OptionException($"{TernOption.InRankStage1Steps} must be at least 1 (got {Stage1Steps}).");
        if (!(InitScale > 0) || !double.IsFinite(InitScale)) throw new OptionException($"{TernOption.InRankInitScale} must be a positive number (got {InitScale}).");
        if (FixedRank is < 1) throw new OptionException($"{TernOption.InRankFixedRank} must be at least 1 (got {FixedRank}).");
    }
}
