using System.Globalization;

namespace Tern.Offloading;

/// <summary>
/// A FlexGen offloading policy (Sheng et al. 2023, §4.2; brief §1.1.3): where weights, the KV cache and activations live (the
/// nine fractions w, c, h over GPU / CPU / disk), the block shape (GPU batch size × number of GPU batches) and the switches.
/// Weights are placed per whole tensor (<see cref="WeightPlacement"/>), the KV cache and activations per whole sequence
/// (<see cref="TierFractions.SplitRows"/>).
/// </summary>
/// <remarks>
/// The string form (<see cref="Parse"/>, <see cref="ToString"/>) is comma-separated <c>key=value</c> items, percentages as
/// GPU/CPU/disk, for example <c>w=20/80/0,kv=0/100/0,act=100/0/0,gbs=48,ngb=3</c>. Keys: <c>w</c>, <c>kv</c>, <c>act</c>
/// (default 100/0/0 each), <c>gbs</c> (GPU batch size, default 1), <c>ngb</c> (number of GPU batches, default 1),
/// <c>wbits</c> and <c>kvbits</c> (16, or 4 for FlexGen's group-wise compression; default 16), <c>cpu-attn</c> and
/// <c>overlap</c> (on/off; defaults off and on). FlexGen's <c>--percent 20 80 0 100 0 100</c> is <c>w=20/80/0,kv=0/100/0,act=0/100/0</c>.
/// </remarks>
public sealed record OffloadPolicy
{
    /// <summary>Weight shares (w_g, w_c, w_d), by bytes.</summary>
    public TierFractions Weights { get; init; } = TierFractions.All(Tier.Gpu);
    /// <summary>KV-cache shares (c_g, c_c, c_d), by whole sequences.</summary>
    public TierFractions Cache { get; init; } = TierFractions.All(Tier.Gpu);
    /// <summary>Activation (hidden state) shares (h_g, h_c, h_d), by whole sequences.</summary>
    public TierFractions Activations { get; init; } = TierFractions.All(Tier.Gpu);
    /// <summary>Sequences computed together on the GPU (gbs).</summary>
    public int GpuBatchSize { get; init; } = 1;
    /// <summary>GPU batches sharing one load of each layer's weights (ngb); the block is gbs·ngb sequences.</summary>
    public int NumGpuBatches { get; init; } = 1;
    /// <summary>Weights stored 4-bit group-quantized (groups of 64 along dim 0) and dequantized on the compute device.</summary>
    public bool CompressWeights { get; init; }
    /// <summary>KV cache stored 4-bit group-quantized (groups of 64 along the head dimension, the KV-policy issue's
    /// <c>QuantizedKvStore</c>): the working cache quantizes each new entry once and the codes move between tiers as codes.</summary>
    public bool CompressCache { get; init; }
    /// <summary>Decode attention on the CPU, in fp32, where the cache lives (FlexGen's <c>--cpu-cache-compute</c>): only each
    /// step's q, k, v cross to the host. Needs the whole cache on the CPU (kv=0/100/0) for now.</summary>
    public bool CpuAttention { get; init; }
    /// <summary>Transfers overlap compute (FlexGen's overlapped loop); off runs every transfer synchronously.</summary>
    public bool Overlap { get; init; } = true;

    /// <summary>Sequences generated together: gbs·ngb.</summary>
    public int BlockSize => GpuBatchSize * NumGpuBatches;

    /// <summary>Everything on the GPU tier (the plain runtime's placement), one GPU batch of <paramref name="gpuBatchSize"/>.</summary>
    public static OffloadPolicy AllGpu(int gpuBatchSize = 1) => new() { GpuBatchSize = gpuBatchSize };

    /// <summary>Checks every field; throws <see cref="ArgumentException"/> naming the field and the fix.</summary>
    public OffloadPolicy Validate()
    {
        Weights.Validate("w");
        Cache.Validate("kv");
        Activations.Validate("act");
        if (GpuBatchSize < 1) throw new ArgumentException($"offload policy: gbs={GpuBatchSize}; the GPU batch size must be at least 1.");
        if (NumGpuBatches < 1) throw new ArgumentException($"offload policy: ngb={NumGpuBatches}; the number of GPU batches must be at least 1.");
        if (CompressCache && CpuAttention)
            throw new NotSupportedException("offload policy: kvbits=4 with cpu-attn=on is not supported (FlexGen turns CPU attention off with a compressed cache: dequantizing on the CPU dominates).");
        if (CpuAttention && Cache != TierFractions.All(Tier.Cpu))
            throw new NotSupportedException($"offload policy: cpu-attn=on needs the whole KV cache in host memory (kv=0/100/0) for now (got kv={Cache}).");
        return this;
    }

    /// <summary>Parses the string form described in the remarks; unknown keys, bad numbers and impossible shares are errors
    /// that name the item.</summary>
    public static OffloadPolicy Parse(string text)
    {
        if (string.IsNullOrWhiteSpace(text)) throw new ArgumentException("offload policy: empty; expected e.g. w=20/80/0,kv=0/100/0,act=100/0/0,gbs=8,ngb=4.");
        var policy = new OffloadPolicy();
        foreach (string raw in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = raw.IndexOf('=');
            if (eq <= 0) throw new ArgumentException($"offload policy: '{raw}' is not key=value (keys: w, kv, act, gbs, ngb, wbits, kvbits, cpu-attn, overlap).");
            string key = raw[..eq].Trim().ToLowerInvariant(), value = raw[(eq + 1)..].Trim();
            policy = key switch
            {
                "w" => policy with { Weights = Fractions(key, value) },
                "kv" => policy with { Cache = Fractions(key, value) },
                "act" => policy with { Activations = Fractions(key, value) },
                "gbs" => policy with { GpuBatchSize = Integer(key, value) },
                "ngb" => policy with { NumGpuBatches = Integer(key, value) },
                "wbits" => policy with { CompressWeights = Bits(key, value) },
                "kvbits" => policy with { CompressCache = Bits(key, value) },
                "cpu-attn" => policy with { CpuAttention = Switch(key, value) },
                "overlap" => policy with { Overlap = Switch(key, value) },
                _ => throw new ArgumentException($"offload policy: unknown key '{key}' (keys: w, kv, act, gbs, ngb, wbits, kvbits, cpu-attn, overlap)."),
            };
        }
        return policy.Validate();
    }

    static TierFractions Fractions(string key, string value)
    {
        var parts = value.Split('/');
        if (parts.Length != 3)
            throw new ArgumentException($"offload policy: {key}={value}; expected three percentages GPU/CPU/disk such as 20/80/0.");
        var p = parts.Select(x => double.TryParse(x, NumberStyles.Float, CultureInfo.InvariantCulture, out double v)
            ? v / 100 : throw new ArgumentException($"offload policy: {key}={value}; '{x}' is not a number.")).ToArray();
        var f = new TierFractions(p[0], p[1], p[2]);
        f.Validate(key);
        return f;
    }

    static int Integer(string key, string value) => int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v)
        ? v : throw new ArgumentException($"offload policy: {key}={value} is not a whole number.");

    static bool Bits(string key, string value) => value switch
    {
        "16" => false,
        "4" => true,
        _ => throw new ArgumentException($"offload policy: {key}={value}; use 16 (uncompressed) or 4 (FlexGen's 4-bit group quantization)."),
    };

    static bool Switch(string key, string value) => value.ToLowerInvariant() switch
    {
        "on" or "true" or "1" => true,
        "off" or "false" or "0" => false,
        _ => throw new ArgumentException($"offload policy: {key}={value}; use on or off."),
    };

    /// <summary>The canonical string form, which <see cref="Parse"/> reads back.</summary>
    public override string ToString() =>
        $"w={Weights},kv={Cache},act={Activations},gbs={GpuBatchSize},ngb={NumGpuBatches}," +
        $"wbits={(CompressWeights ? 4 : 16)},kvbits={(CompressCache ? 4 : 16)},cpu-attn={(CpuAttention ? "on" : "off")},overlap={(Overlap ? "on" : "off")}";
}
