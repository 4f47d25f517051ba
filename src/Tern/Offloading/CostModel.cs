namespace Tern.Offloading;

/// <summary>Memory of each tier that a policy may use (bytes), FlexGen's gmem / cmem / nmem.</summary>
public sealed record MemoryCapacity(long Gpu, long Cpu, long Disk);

/// <summary>A linear expression over FlexGen's nine placement fractions (w_g, w_c, w_d, c_g, c_c, c_d, h_g, h_c, h_d) plus a constant.</summary>
internal readonly record struct Lin(double[] C, double K)
{
    public const int Wg = 0, Wc = 1, Wd = 2, Cg = 3, Cc = 4, Cd = 5, Hg = 6, Hc = 7, Hd = 8;

    public static Lin Const(double k) => new(new double[9], k);

    /// <summary>Σ coefficient·fraction over the given fractions.</summary>
    public static Lin Of(double coefficient, params int[] fractions)
    {
        var c = new double[9];
        foreach (int f in fractions) c[f] += coefficient;
        return new Lin(c, 0);
    }

    public static Lin operator +(Lin a, Lin b) => new(a.C.Zip(b.C, (x, y) => x + y).ToArray(), a.K + b.K);
    public static Lin operator *(double s, Lin a) => new(a.C.Select(x => s * x).ToArray(), s * a.K);
    public static Lin operator /(Lin a, double s) => (1 / s) * a;

    public double At(IReadOnlyList<double> p) => K + C.Select((c, i) => c * p[i]).Sum();
}

/// <summary>One layer's times on each link and on the compute device (seconds, linear in the fractions).</summary>
internal readonly record struct LayerTerms(Lin CpuToGpu, Lin GpuToCpu, Lin DiskToCpu, Lin CpuToDisk, Lin Compute)
{
    /// <summary>Every task after the other: the schedule with overlap off.</summary>
    public Lin Serial => CpuToGpu + GpuToCpu + DiskToCpu + CpuToDisk + Compute;
}

/// <summary>A policy's predicted latencies, throughput and peak memory.</summary>
public sealed record Prediction(double PrefillLayerSeconds, double DecodeLayerSeconds, double TotalSeconds, double TokensPerSecond,
    double GpuPeakBytes, double CpuPeakBytes, double DiskPeakBytes);

/// <summary>
/// FlexGen's cost model (Sheng et al. 2023, §4.3; brief §1.1.6): per-layer transfer and compute times of prefill and decode as
/// linear functions of the nine placement fractions, T = T_pre·L + T_gen·(n − 1)·L, and the peak memory of each tier. The
/// bounds are the released optimizer's (cost_model.py): T_pre ≥ ctog_p + dtoc_p, gtoc_p + ctod_p, comp_p;
/// T_gen ≥ ctog_g + X for X ∈ {gtoc_g, dtoc_g, ctod_g, comp_g}. Two deviations follow Tern's engine: without CPU attention
/// the decode moves the CPU and disk share of the cache to the GPU every step (ctog_g, gtoc_g) and attends on the GPU;
/// compressed weights and cache count at their real 4.5/16 of the bytes (FlexGen: 1/4). Two additions: the GEMM time of each
/// GPU batch is bounded below by streaming the layer's weights from device memory (<see cref="HardwareProfile.DeviceMemoryBandwidth"/>,
/// a roofline: at decode's small batches a GEMM is a GEMV), and every layer of a step
/// runs ngb schedule items, each with a fixed cost (<see cref="HardwareProfile.ItemOverhead"/>) that overlaps nothing, so
/// T_pre and T_gen grow by ngb·overhead; it is constant within one (gbs, ngb), so the LP is unchanged, but it steers the
/// search away from many small GPU batches.
/// </summary>
public sealed class CostModel(OffloadWorkload w, HardwareProfile hw, bool compressWeights, bool cpuAttention = false, bool compressCache = false)
{
    /// <summary>Stored bytes per element of 4-bit group-quantized weights relative to 16-bit: 4 bits + two 16-bit numbers per 64.</summary>
    public const double CompressionRatio = 4.5 / 16;

    double Wi => w.LayerWeightBytes * (compressWeights ? CompressionRatio * 2 / w.ElementSize : 1);

    /// <summary>KV-cache bytes per token and layer as stored (FlexGen's 4h in fp16; 4-bit codes with kvbits=4; the KV policy's
    /// 8- or 4-bit codes with a (step, min) pair per 64 elements).</summary>
    double Cb => w.CacheBytesPerToken * (compressCache ? CompressionRatio * 2 / w.ElementSize : 1)
        * (w.CacheBits >= 16 ? 1 : (w.CacheBits / 8.0 + 2.0 * w.ElementSize / 64) / w.ElementSize);

    /// <summary>Entries a sequence holds when it has seen <paramref name="tokens"/> tokens: all of them, or at most the KV
    /// policy's budget.</summary>
    double Kept(double tokens) => w.CacheTokens is { } budget ? Math.Min(budget, tokens) : tokens;

    /// <summary>Seconds of one GPU batch's products with a layer's weights (roofline): <paramref name="flops"/> at the GEMM
    /// throughput, or, when longer, the time to stream the layer's (uncompressed) weights from device memory once — which every
    /// GPU batch does, so that at small batches the compute grows with ngb, not with the tokens (FlexGen's F_mm alone would
    /// price a one-sequence GEMV at a GEMM's rate).</summary>
    double Gemm(double flops, double flopsPerSecond) =>
        Math.Max(flops / flopsPerSecond, hw.DeviceMemoryBandwidth > 0 ? w.LayerWeightBytes / hw.DeviceMemoryBandwidth : 0);

    /// <summary>Seconds to expand a layer's 4-bit weights, once per stage.</summary>
    double Dequantize => compressWeights && hw.DequantizeBandwidth > 0 ? w.LayerWeightBytes / hw.DequantizeBandwidth : 0;

    /// <summary>Lower bounds of the prefill layer time T_pre (seconds): the released optimizer's pairing of the links.</summary>
    internal Lin[] PrefillBounds(int gbs, int ngb)
    {
        var t = PrefillTerms(gbs, ngb);
        return new[] { t.CpuToGpu + t.DiskToCpu, t.GpuToCpu + t.CpuToDisk, t.Compute };
    }

    /// <summary>Lower bounds of the decode layer time T_gen (seconds): every link after the CPU→GPU loads, which share the
    /// host's memory bus with them (the released optimizer's pairing).</summary>
    internal Lin[] DecodeBounds(int gbs, int ngb)
    {
        var t = DecodeTerms(gbs, ngb);
        return new[] { t.CpuToGpu + t.GpuToCpu, t.CpuToGpu + t.DiskToCpu, t.CpuToGpu + t.CpuToDisk, t.CpuToGpu + t.Compute };
    }

    /// <summary>The prefill's per-layer times, link by link.</summary>
    LayerTerms PrefillTerms(int gbs, int ngb)
    {
        double s = w.Prompt, hb = w.HiddenBytesPerToken, cb = Cb, h = w.AttentionWidth, wi = Wi, bls = (double)gbs * ngb;
        var ctog = (Lin.Of(wi, Lin.Wc, Lin.Wd) + Lin.Of(hb * s * bls, Lin.Hc, Lin.Hd)) / hw.CpuToGpu;
        var gtoc = Lin.Of(cb * Kept(s + 1) * bls / hw.GpuToCpuCache, Lin.Cc, Lin.Cd) + Lin.Of(hb * s * bls / hw.GpuToCpuHidden, Lin.Hc, Lin.Hd);
        var dtoc = (Lin.Of(wi, Lin.Wd) + Lin.Of(hb * s * bls, Lin.Hd)) / hw.DiskToCpu;
        var ctod = Lin.Of(cb * bls * Kept(s + 1) / hw.CpuToDiskCachePrefill, Lin.Cd) + Lin.Of(hb * s * bls / hw.CpuToDiskHiddenPrefill, Lin.Hd);
        var comp = Lin.Const(ngb * Gemm(gbs * s * 2 * w.LayerParameters, hw.GemmPrefill) + Dequantize + 4.0 * bls * s * s * h / hw.AttentionPrefill);
        return new(ctog, gtoc, dtoc, ctod, comp);
    }

    /// <summary>The decode's per-layer times, link by link, at the average cache length s + n/2.</summary>
    LayerTerms DecodeTerms(int gbs, int ngb)
    {
        double s = w.Prompt, n = w.Generate, hb = w.HiddenBytesPerToken, cb = Cb, h = w.AttentionWidth, wi = Wi, bls = (double)gbs * ngb;
        double len = Kept(s + n / 2.0);
        var ctog = (Lin.Of(wi, Lin.Wc, Lin.Wd) + Lin.Of(hb * bls, Lin.Hc, Lin.Hd)) / hw.CpuToGpu;
        var gtoc = Lin.Of(hb * bls / hw.GpuToCpuHidden, Lin.Hc, Lin.Hd);
        var dtoc = (Lin.Of(cb * bls * len, Lin.Cd) + Lin.Of(hb * bls, Lin.Hd)) / hw.DiskToCpu + Lin.Of(wi / (0.95 * hw.DiskToCpu), Lin.Wd);
        var ctod = (Lin.Of(cb * bls, Lin.Cd) + Lin.Of(hb * bls, Lin.Hd)) / hw.CpuToDiskDecode;
        var comp = Lin.Const(ngb * Gemm(gbs * 2 * w.LayerParameters, hw.GemmDecode) + Dequantize);
        double attention = 4.0 * bls * len * h;
        if (cpuAttention)
        {
            // F_cpu_eff = F_cpu · max(0.1, 1 + c1·a·e − c2·a − c3·e), a = max(0, log2(64/gbs)), e = max(0, log2(4096/h)).
            double a = Math.Max(0, Math.Log2(64.0 / gbs)), e = Math.Max(0, Math.Log2(4096.0 / w.Hidden));
            var c = hw.CpuEfficiency;
            double cpuEff = hw.CpuAttention * Math.Max(0.1, 1 + c[0] * a * e - c[1] * a - c[2] * e);
            comp += Lin.Of(attention / hw.AttentionDecode, Lin.Cg) + Lin.Of(attention / cpuEff, Lin.Cc, Lin.Cd);
        }
        else
        {
            // Tern's engine: the whole cache of each batch comes to the GPU, and the new entries go back — all of a KV policy's
            // cache after a step that evicted (compaction moves entries), charged here as if every step did.
            ctog += Lin.Of(cb * bls * len / hw.CpuToGpu, Lin.Cc, Lin.Cd);
            gtoc += Lin.Of(cb * bls * (w.CacheTokens is null ? 1 : len) / hw.GpuToCpuCache, Lin.Cc, Lin.Cd);
            comp += Lin.Const(attention / hw.AttentionDecode);
        }
        return new(ctog, gtoc, dtoc, ctod, comp);
    }

    /// <summary>Peak bytes on the GPU, in prefill and in decode (home + working set; brief's table, in the model's element size).</summary>
    internal Lin[] GpuPeaks(int gbs, int ngb)
    {
        double s = w.Prompt, n = w.Generate, h = w.Hidden, h2 = w.Intermediate, nh = w.Heads, hb = w.HiddenBytesPerToken, cb = Cb;
        double es = w.ElementSize, bls = (double)gbs * ngb, L = w.Layers, wi = Wi;
        double half = es / 2; // the brief's byte counts are fp16
        var homePre = Lin.Of(wi * L, Lin.Wg) + Lin.Of(hb * s * bls, Lin.Hg) + Lin.Of(cb * Kept(s + n) * bls * L, Lin.Cg);
        double ip = half * (8 * gbs * s * h + gbs * (2 * s * h + 2 * nh * s * s) + 2 * gbs * s * h + 4 * gbs * s * h + 2 * gbs * s * h2 + 2 * gbs * s * h);
        var workPre = Lin.Const(2 * wi) + Lin.Of(-2 * wi, Lin.Wg) + Lin.Const(hb * s * gbs) + Lin.Of(-hb * s * gbs, Lin.Hg) + Lin.Const(ip);
        var homeDec = Lin.Of(wi * L, Lin.Wg) + Lin.Of(hb * bls, Lin.Hg) + Lin.Of(cb * Kept(s + n) * bls * L, Lin.Cg);
        // Without CPU attention every GPU batch's cache is on the GPU while it computes (FlexGen's c_g factor becomes 1).
        Lin OnGpu(double bytes) => cpuAttention ? Lin.Of(bytes, Lin.Cg) : Lin.Const(bytes);
        double ig = half * (8 * gbs * h + 4 * gbs * h + 2 * gbs * h2 + 2 * gbs * h);
        var workDec = Lin.Const(2 * wi) + Lin.Of(-2 * wi, Lin.Wg) + Lin.Const(hb * gbs) + Lin.Of(-hb * gbs, Lin.Hg)
            + OnGpu(cb * gbs * Kept(s + n)) + OnGpu(half * gbs * (2 * h + 2 * (s + n) * h + 2 * nh * (s + n) + 2 * (s + n) * h + 2 * h)) + Lin.Const(ig);
        return new[] { homePre + workPre, homeDec + workDec };
    }

    /// <summary>Peak bytes in host memory, in prefill and in decode.</summary>
    internal Lin[] CpuPeaks(int gbs, int ngb)
    {
        double s = w.Prompt, n = w.Generate, h = w.Hidden, nh = w.Heads, hb = w.HiddenBytesPerToken, cb = Cb;
        double es = w.ElementSize, bls = (double)gbs * ngb, L = w.Layers, wi = Wi, half = es / 2;
        var pre = Lin.Of(wi * L, Lin.Wc) + Lin.Of(hb * s * bls, Lin.Hc) + Lin.Of(cb * Kept(s) * bls * L, Lin.Cc)
            + Lin.Const(wi) + Lin.Of(-wi, Lin.Wg) + Lin.Const(hb * s * gbs) + Lin.Of(-hb * s * gbs, Lin.Hg);
        var dec = Lin.Of(wi * L, Lin.Wc) + Lin.Of(hb * bls, Lin.Hc) + Lin.Of(cb * Kept(s + n) * bls * L, Lin.Cc)
            + Lin.Of(wi, Lin.Wd) + Lin.Of(2 * hb * gbs, Lin.Hd) + Lin.Of(2 * cb * Kept(s + n) * gbs, Lin.Cd) + Lin.Const(half * (2 * nh * (s + n) * gbs + 2 * h * gbs));
        return new[] { pre, dec };
    }

    /// <summary>Bytes on disk.</summary>
    internal Lin DiskPeak(int gbs, int ngb)
    {
        double s = w.Prompt, n = w.Generate, bls = (double)gbs * ngb;
        return Lin.Of(Wi * w.Layers, Lin.Wd) + Lin.Of(w.HiddenBytesPerToken * s * bls, Lin.Hd) + Lin.Of(Cb * Kept(s + n) * bls * w.Layers, Lin.Cd);
    }

    /// <summary>The fractions of <paramref name="policy"/> in the LP's order.</summary>
    internal static double[] Fractions(OffloadPolicy policy) => new[]
    {
        policy.Weights.Gpu, policy.Weights.Cpu, policy.Weights.Disk, policy.Cache.Gpu, policy.Cache.Cpu, policy.Cache.Disk,
        policy.Activations.Gpu, policy.Activations.Cpu, policy.Activations.Disk,
    };

    /// <summary>Predicted latencies, throughput (bls·n / T) and peaks of <paramref name="policy"/>.</summary>
    public Prediction Predict(OffloadPolicy policy)
    {
        var p = Fractions(policy);
        int gbs = policy.GpuBatchSize, ngb = policy.NumGpuBatches, bls = gbs * ngb;
        double items = ngb * hw.ItemOverhead;
        // Overlap off runs every task of an item after the other: the terms add up instead of bounding each other.
        double pre = (policy.Overlap ? PrefillBounds(gbs, ngb).Max(b => b.At(p)) : PrefillTerms(gbs, ngb).Serial.At(p)) + items;
        double gen = (policy.Overlap ? DecodeBounds(gbs, ngb).Max(b => b.At(p)) : DecodeTerms(gbs, ngb).Serial.At(p)) + items;
        double total = pre * w.Layers + gen * (w.Generate - 1) * w.Layers;
        return new Prediction(pre, gen, total, bls * (double)w.Generate / total,
            GpuPeaks(gbs, ngb).Max(b => b.At(p)), CpuPeaks(gbs, ngb).Max(b => b.At(p)), DiskPeak(gbs, ngb).At(p));
    }
}
