using System.Text.Json.Nodes;
using Tern.Checkpoints;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>How a factored linear map is parameterised (InRank, Zhao et al. 2023).</summary>
public enum LowRankVariant
{
    /// <summary>InRank-Efficient, as released: W = B·A, trained from scratch.</summary>
    Efficient,
    /// <summary>The paper's original form: W = W0 + B·A with W0 (the <c>.weight</c> tensor) frozen at its initial value.</summary>
    Original,
}

/// <summary>One factored linear map: <see cref="Width"/> components allocated, the first <see cref="Rank"/> of them discovered.</summary>
public sealed class LowRankFactor
{
    /// <summary>The discovered rank r (never decreases during rank discovery).</summary>
    public int Rank { get; set; }
    /// <summary>Allocated components: rows of <c>weight_a</c>, columns of <c>weight_b</c> (Rmax in stage 1, r in stage 2).</summary>
    public int Width { get; set; }
}

/// <summary>
/// Which linear maps of a model are factored, read from and written to config.json's <c>low_rank</c> section:
/// <code>
/// "low_rank": {"variant": "efficient", "stage": 1, "buffer": 100,
///              "linears": {"model.layers.0.mlp.up_proj": {"rank": 2, "width": 256}, ...}}
/// </code>
/// A factored linear <c>L</c> stores <c>L.weight_a</c> [width, in] and <c>L.weight_b</c> [out, width] (plus, for the original
/// variant, the frozen <c>L.weight</c> [out, in], or [in, out] where <c>"dense_transposed": true</c> says the architecture
/// stores it so, as GPT-2; and <c>L.bias</c> when the architecture has one). The forward pass uses the
/// first <see cref="Live"/> components: rank + buffer in stage 1 (rank discovery), rank in stage 2. The section is what a loader
/// detects: without it every linear is dense.
/// </summary>
public sealed class LowRankLayout
{
    /// <summary>The config.json key of the section.</summary>
    public const string ConfigKey = "low_rank";

    readonly Dictionary<string, LowRankFactor> linears;

    /// <summary>A layout over <paramref name="linears"/> (full linear names, e.g. <c>model.layers.0.mlp.up_proj</c>).</summary>
    public LowRankLayout(LowRankVariant variant, int stage, int buffer, IReadOnlyDictionary<string, LowRankFactor> linears)
    {
        if (stage is not (1 or 2)) throw new ArgumentOutOfRangeException(nameof(stage), stage, "stage is 1 (rank discovery) or 2 (fixed rank).");
        Variant = variant;
        Stage = stage;
        Buffer = buffer;
        this.linears = new Dictionary<string, LowRankFactor>(linears, StringComparer.Ordinal);
    }

    /// <summary>The parameterisation.</summary>
    public LowRankVariant Variant { get; }
    /// <summary>1 while ranks are discovered (buffer components live), 2 at fixed rank.</summary>
    public int Stage { get; set; }
    /// <summary>Components live past the rank in stage 1 (InRank's buffer b).</summary>
    public int Buffer { get; }
    /// <summary>True when the architecture stores its dense weights transposed, [in, out] (GPT-2's Conv1D): the original
    /// variant's W0 is read so, and a dense export writes W so.</summary>
    public bool DenseTransposed { get; init; }
    /// <summary>The factored linear maps by full name, in model order.</summary>
    public IReadOnlyDictionary<string, LowRankFactor> Linears => linears;

    /// <summary>True when the linear map <paramref name="linear"/> (full name) is factored.</summary>
    public bool Contains(string linear) => linears.ContainsKey(linear);

    /// <summary>Components the forward pass uses: rank + buffer (at most the width) in stage 1, the rank in stage 2.</summary>
    public long Live(string linear)
    {
        var f = linears.TryGetValue(linear, out var factor) ? factor : throw new KeyNotFoundException($"'{linear}' is not a factored linear map.");
        return Stage == 1 ? Math.Min(f.Rank + Buffer, f.Width) : f.Rank;
    }

    /// <summary>True for the frozen dense part W0 of the original variant (a parameter named <c>L.weight</c> of a factored L).</summary>
    public bool IsFrozen(string parameter) =>
        Variant == LowRankVariant.Original && parameter.EndsWith(".weight", StringComparison.Ordinal) && Contains(parameter[..^".weight".Length]);

    /// <summary>The section as written to config.json.</summary>
    public JsonObject ToJson()
    {
        var list = new JsonObject();
        foreach (var (name, f) in linears) list[name] = new JsonObject { ["rank"] = f.Rank, ["width"] = f.Width };
        var json = new JsonObject { ["variant"] = Variant.ToString().ToLowerInvariant(), ["stage"] = Stage, ["buffer"] = Buffer };
        if (DenseTransposed) json["dense_transposed"] = true;
        json["linears"] = list;
        return json;
    }

    /// <summary>The layout of <paramref name="config"/>'s <c>low_rank</c> section; null when it has none. Errors name the field.</summary>
    public static LowRankLayout? FromConfig(HfConfig config)
    {
        if (config.Json[ConfigKey] is not { } node) return null;
        try
        {
            var section = node.AsObject();
            var variant = (string?)section["variant"] switch
            {
                "efficient" => LowRankVariant.Efficient,
                "original" => LowRankVariant.Original,
                var other => throw config.Error($"{ConfigKey}.variant", $"is '{other}' (expected efficient or original)"),
            };
            int stage = (int?)section["stage"] ?? throw config.Error($"{ConfigKey}.stage", "is missing");
            int buffer = (int?)section["buffer"] ?? 0;
            var linears = new Dictionary<string, LowRankFactor>(StringComparer.Ordinal);
            foreach (var (name, entry) in section["linears"]?.AsObject() ?? throw config.Error($"{ConfigKey}.linears", "is missing"))
            {
                var f = new LowRankFactor { Rank = (int)entry!["rank"]!, Width = (int)entry["width"]! };
                if (f.Rank < 1 || f.Width < f.Rank) throw config.Error($"{ConfigKey}.linears.{name}", $"has rank {f.Rank} and width {f.Width}; need 1 ≤ rank ≤ width");
                linears[name] = f;
            }
            if (stage is not (1 or 2)) throw config.Error($"{ConfigKey}.stage", $"is {stage} (expected 1 or 2)");
            return new LowRankLayout(variant, stage, buffer, linears) { DenseTransposed = (bool?)section["dense_transposed"] ?? false };
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
        {
            throw config.Error(ConfigKey, $"is malformed ({e.Message})");
        }
    }
}

/// <summary>A factored linear map y = x·(W0 + B·A)ᵀ + b, run as two thin GEMMs (x·Aᵀ, then ·Bᵀ) over the first
/// <paramref name="Live"/> components; <paramref name="Dense"/> is W0 of the original variant (null: W = B·A).</summary>
internal sealed record FactoredLinear(Tensor? Dense, Tensor A, Tensor B, Tensor? Bias, long Live)
{
    public Tensor Forward(Tensor x)
    {
        var a = Live == A.size(0) ? A : A.narrow(0, 0, Live);
        var b = Live == B.size(1) ? B : B.narrow(1, 0, Live);
        var y = Linear.Apply(Linear.Apply(x, a), b, Bias);
        return Dense is null ? y : y + Linear.Apply(x, Dense);
    }

    /// <summary>residual + <see cref="Forward"/>(x).</summary>
    public Tensor ForwardAdd(Tensor x, Tensor residual) => residual + Forward(x);
}
