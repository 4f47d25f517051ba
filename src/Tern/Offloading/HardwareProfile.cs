using System.Text.Json;
using System.Text.Json.Serialization;
using Tern.Runtime;

namespace Tern.Offloading;

/// <summary>
/// The hardware constants of FlexGen's cost model (brief §1.1.6): link bandwidths in bytes/s and throughputs in FLOP/s,
/// measured on the machine at hand by <c>tern offload calibrate</c> (<see cref="Calibration"/>) and stored as JSON.
/// </summary>
public sealed record HardwareProfile
{
    /// <summary>What measured it (machine, devices, date), or where the numbers come from.</summary>
    public string Source { get; init; } = "";
    /// <summary>CPU→GPU copy bandwidth, pinned (B_ctog).</summary>
    public double CpuToGpu { get; init; }
    /// <summary>GPU→CPU bandwidth for KV-cache stores (B_gtoc_cache).</summary>
    public double GpuToCpuCache { get; init; }
    /// <summary>GPU→CPU bandwidth for activations (B_gtoc_hidden).</summary>
    public double GpuToCpuHidden { get; init; }
    /// <summary>Disk→CPU read bandwidth (B_dtoc).</summary>
    public double DiskToCpu { get; init; }
    /// <summary>CPU→disk write bandwidth of the prefill's KV cache (B_ctod_cache_p).</summary>
    public double CpuToDiskCachePrefill { get; init; }
    /// <summary>CPU→disk write bandwidth of the prefill's activations (B_ctod_hidden_p).</summary>
    public double CpuToDiskHiddenPrefill { get; init; }
    /// <summary>CPU→disk write bandwidth in decode (B_ctod_g).</summary>
    public double CpuToDiskDecode { get; init; }
    /// <summary>GEMM throughput of the compute device at prefill shapes (F_mm_p).</summary>
    public double GemmPrefill { get; init; }
    /// <summary>GEMM throughput at decode shapes (F_mm_g).</summary>
    public double GemmDecode { get; init; }
    /// <summary>Batched attention products at prefill shapes (F_bmm_p).</summary>
    public double AttentionPrefill { get; init; }
    /// <summary>Batched attention products at decode shapes (F_bmm_g).</summary>
    public double AttentionDecode { get; init; }
    /// <summary>CPU attention throughput in decode, fp32 (F_cpu).</summary>
    public double CpuAttention { get; init; }
    /// <summary>Rate at which the compute device streams a weight matrix through a one-row product (bytes/s): the roofline
    /// floor of every GPU batch's GEMMs (<see cref="CostModel"/>). Not in FlexGen's model; 0 = not measured (FlexGen's
    /// constants, older profiles), and no floor applies.</summary>
    public double DeviceMemoryBandwidth { get; init; }
    /// <summary>Bytes of 16-bit weights per second that the compute device restores from 4-bit groups (each stage with
    /// compressed weights expands them once). Not in FlexGen's model; 0 = not measured, and expansion is taken as free.</summary>
    public double DequantizeBandwidth { get; init; }
    /// <summary>Fixed cost of one item of the block schedule (one stage of one GPU batch: its barrier, loads and stores issued,
    /// working cache refilled), in seconds, measured by running a tiny model offloaded. Not in FlexGen's model: with many small
    /// GPU batches it dominates. 0 = not measured (FlexGen's constants, older profiles).</summary>
    public double ItemOverhead { get; init; }
    /// <summary>FlexGen's efficiency correction of <see cref="CpuAttention"/> for small batches and widths (c1, c2, c3).</summary>
    public double[] CpuEfficiency { get; init; } = { 0.0168, 0.0328, 0.0621 };

    const double GiB = 1L << 30, T = 1e12;

    /// <summary>The constants FlexGen fitted for its GCP T4 box (brief §1.1.6), for planning before calibration or for
    /// comparing with FlexGen's own choices. Not this machine's numbers.</summary>
    public static HardwareProfile FlexGenT4 { get; } = new()
    {
        Source = "FlexGen's fitted constants for a GCP T4 (16 GB) + 208 GB DRAM + NVMe box (experimental/cost_model.py), not measured here",
        CpuToGpu = 12.89 * GiB, GpuToCpuCache = 0.97 * GiB, GpuToCpuHidden = 4.82 * GiB, DiskToCpu = 0.473 * GiB,
        CpuToDiskCachePrefill = 0.746 * GiB, CpuToDiskHiddenPrefill = 2.015 * GiB, CpuToDiskDecode = 2.015 * GiB,
        GemmPrefill = 21.24 * T, GemmDecode = 4.3 * T, AttentionPrefill = 9.97 * T, AttentionDecode = 0.079 * T, CpuAttention = 0.0123 * T,
    };

    static readonly JsonSerializerOptions Json = new() { WriteIndented = true, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    /// <summary>Reads a profile written by <see cref="Save"/>; a missing or malformed file is an error naming it.</summary>
    public static HardwareProfile Load(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"hardware profile {path} does not exist; make one with `tern offload calibrate`.", path);
        HardwareProfile? profile;
        try
        {
            profile = JsonSerializer.Deserialize<HardwareProfile>(File.ReadAllText(path), Json);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"hardware profile {path} is not valid JSON ({e.Message}); make it again with `tern offload calibrate`.", e);
        }
        return (profile ?? throw new InvalidDataException($"hardware profile {path} is empty.")).Validate(path);
    }

    /// <summary>Writes the profile as JSON, atomically.</summary>
    public void Save(string path) => AtomicFile.Write(path, s => JsonSerializer.Serialize(s, Validate(path), Json));

    HardwareProfile Validate(string path)
    {
        foreach (var (name, v) in new[] { (nameof(CpuToGpu), CpuToGpu), (nameof(GpuToCpuCache), GpuToCpuCache), (nameof(GpuToCpuHidden), GpuToCpuHidden),
                     (nameof(DiskToCpu), DiskToCpu), (nameof(CpuToDiskCachePrefill), CpuToDiskCachePrefill), (nameof(CpuToDiskHiddenPrefill), CpuToDiskHiddenPrefill),
                     (nameof(CpuToDiskDecode), CpuToDiskDecode), (nameof(GemmPrefill), GemmPrefill), (nameof(GemmDecode), GemmDecode),
                     (nameof(AttentionPrefill), AttentionPrefill), (nameof(AttentionDecode), AttentionDecode), (nameof(CpuAttention), CpuAttention) })
            if (!(v > 0) || double.IsInfinity(v))
                throw new InvalidDataException($"hardware profile {path}: {name} is {v}; every bandwidth and throughput must be a positive number.");
        if (!(ItemOverhead >= 0) || double.IsInfinity(ItemOverhead))
            throw new InvalidDataException($"hardware profile {path}: {nameof(ItemOverhead)} is {ItemOverhead}; it must be 0 or more seconds.");
        foreach (var (name, v) in new[] { (nameof(DeviceMemoryBandwidth), DeviceMemoryBandwidth), (nameof(DequantizeBandwidth), DequantizeBandwidth) })
            if (!(v >= 0) || double.IsInfinity(v))
                throw new InvalidDataException($"hardware profile {path}: {name} is {v}; it must be 0 (not measured) or a positive bandwidth.");
        if (CpuEfficiency.Length != 3) throw new InvalidDataException($"hardware profile {path}: {nameof(CpuEfficiency)} needs three numbers (c1, c2, c3).");
        return this;
    }
}
