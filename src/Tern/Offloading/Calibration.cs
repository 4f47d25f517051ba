using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Tern.Checkpoints;
using Tern.Compression;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Offloading;

/// <summary>How <see cref="Calibration"/> measures.</summary>
public sealed record CalibrationOptions
{
    /// <summary>The compute device (CPU↔GPU links are measured only on CUDA; on the CPU the "GPU" tier is host memory).</summary>
    public required Device Device { get; init; }
    /// <summary>Type of the GEMM and attention probes.</summary>
    public ModelDType DType { get; init; } = ModelDType.Float16;
    /// <summary>Where the disk probe writes its file (deleted afterwards); null skips the disk and keeps <see cref="Fallback"/>'s.</summary>
    public string? Directory { get; init; }
    /// <summary>Bytes per transfer probe.</summary>
    public long TransferBytes { get; init; } = 256L << 20;
    /// <summary>Width of the GEMM probes (h): [2048, h] × [h, h] for prefill; decode's probes are twice as wide, [128, 2h] and
    /// [1, 2h] × [2h, 2h] (the weight-streaming floor), so the weights outgrow the caches.</summary>
    public int Width { get; init; } = 4096;
    /// <summary>Constants kept where nothing can be measured.</summary>
    public HardwareProfile Fallback { get; init; } = HardwareProfile.FlexGenT4;
}

/// <summary>
/// Measures the cost model's constants on the machine at hand (<c>tern offload calibrate</c>): pinned CPU↔GPU copies, disk
/// writes and reads (the file's pages are dropped from the page cache before reading), GEMM and batched attention products at
/// prefill and decode shapes, the rate one-row products stream weights, CPU attention in fp32 over a 16-bit cache, the
/// expansion of 4-bit weights, and the schedule's cost per item (a tiny model run offloaded). Each probe runs once to warm up, then three times; the best counts.
/// FlexGen fitted its constants to whole-run latencies instead (profiling primitives over-predicts, its notes say): compare
/// <c>tern bench --offload</c>'s measured and predicted throughput to see how far these land.
/// </summary>
public static class Calibration
{
    const int Repeats = 3;

    /// <summary>Runs every probe; progress lines go to <paramref name="log"/>.</summary>
    public static HardwareProfile Run(CalibrationOptions o, TextWriter log)
    {
        using var noGrad = torch.no_grad();
        bool cuda = o.Device.type == DeviceType.CUDA;
        var dt = o.DType.ToScalarType();
        var p = o.Fallback with { Source = $"measured by tern offload calibrate on {DeviceReport.Name(o.Device)}, {o.DType.ShortName()}, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC" };

        long n = o.TransferBytes / 2;
        using (var host = Host(n, cuda))
        using (var device = torch.empty(n, ScalarType.Float16, o.Device))
        {
            double toGpu = Bandwidth(o.TransferBytes, () => device.copy_(host, true), cuda);
            double toCpu = Bandwidth(o.TransferBytes, () => host.copy_(device, true), cuda);
            log.WriteLine($"CPU→GPU {Gb(toGpu)}, GPU→CPU {Gb(toCpu)}{(cuda ? " (pinned)" : " (host memory copies: no GPU)")}");
            p = p with { CpuToGpu = toGpu, GpuToCpuCache = toCpu, GpuToCpuHidden = toCpu };
        }
        if (o.Directory is not null)
        {
            var (write, read) = Disk(o.Directory, o.TransferBytes);
            log.WriteLine($"disk write {Gb(write)}, read {Gb(read)} ({o.Directory})");
            p = p with { DiskToCpu = read, CpuToDiskCachePrefill = write, CpuToDiskHiddenPrefill = write, CpuToDiskDecode = write };
        }
        else log.WriteLine("disk: not measured (no directory given); keeping " + o.Fallback.Source);

        int h = o.Width;
        double gemmPrefill = Gemm(2048, h, dt, o.Device, cuda), gemmDecode = Gemm(128, 2 * h, dt, o.Device, cuda);
        // A one-row product reads each weight once and does 2 FLOPs with it: FLOP/s × element size / 2 = bytes/s.
        double weightStream = Gemm(1, 2 * h, dt, o.Device, cuda) * dt.ElementSize() / 2;
        log.WriteLine($"GEMM prefill {Tf(gemmPrefill)}, decode {Tf(gemmDecode)}; one-row products stream weights at {Gb(weightStream)}");
        int heads = Math.Max(1, h / 128);
        double attnPrefill = Attention(8 * heads, 512, 512, dt, dt, o.Device, cuda), attnDecode = Attention(32 * heads, 1, 544, dt, dt, o.Device, cuda);
        // As the engine delegates it: a 16-bit host cache widened to fp32 as it is read.
        double cpuAttention = Attention(32 * heads, 1, 544, dt, ScalarType.Float32, torch.CPU, false);
        log.WriteLine($"attention prefill {Tf(attnPrefill)}, decode {Tf(attnDecode)}, CPU fp32 decode {Tf(cpuAttention)}");
        double dequantize = Dequantize(2 * h, dt, o.Device, cuda);
        log.WriteLine($"4-bit weights expand at {Gb(dequantize)} (16-bit bytes out)");
        double itemOverhead = ItemOverhead(o, cuda);
        log.WriteLine($"schedule item overhead {itemOverhead * 1e3:F3} ms");
        return p with
        {
            GemmPrefill = gemmPrefill, GemmDecode = gemmDecode, DeviceMemoryBandwidth = weightStream, AttentionPrefill = attnPrefill, AttentionDecode = attnDecode, CpuAttention = cpuAttention,
            ItemOverhead = itemOverhead, DequantizeBandwidth = dequantize,
        };
    }

    /// <summary>Decode seconds per schedule item of a tiny Llama (2 layers, hidden 64, dummy weights) offloaded with weights,
    /// cache and activations in host memory, 8 GPU batches of one sequence: its compute and transfers are negligible, so the
    /// time is the engine's fixed cost per item (barrier, issuing loads and stores, refilling the working cache).</summary>
    static double ItemOverhead(CalibrationOptions o, bool cuda)
    {
        const int batches = 8, newTokens = 9, layers = 2;
        var config = HfConfig.Parse("""
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 256,
             "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": false}
            """, "the calibration's probe model");
        using var source = DummyWeightSource.Create(new DummyWeightOptions());
        var policy = OffloadPolicy.Parse($"w=0/100/0,kv=0/100/0,act=0/100/0,gbs=1,ngb={batches}");
        using var model = OffloadedModel.Create(config, source, o.Device, cuda ? o.DType : ModelDType.Float32, new OffloadOptions { Policy = policy });
        var prompts = Enumerable.Range(0, batches).Select(i => (IReadOnlyList<int>)Enumerable.Range(1 + i, 8).ToArray()).ToArray();
        int items = (newTokens - 1) * (layers + 2) * batches; // decode steps × stages (embedding, blocks, head) × GPU batches
        double best = double.MaxValue;
        for (int r = 0; r <= Repeats; r++)
        {
            double seconds = model.Generate(prompts, newTokens).Decode.TotalSeconds;
            if (r > 0) best = Math.Min(best, seconds / items); // the first run warms up
        }
        return best;
    }

    static Tensor Host(long n, bool pin)
    {
        var t = torch.zeros(n, ScalarType.Float16);
        if (!pin) return t;
        var pinned = t.pin_memory();
        t.Dispose();
        return pinned;
    }

    static double Seconds(Action probe, bool cuda)
    {
        double best = double.MaxValue;
        for (int i = 0; i <= Repeats; i++)
        {
            using var scope = torch.NewDisposeScope();
            if (cuda) torch.cuda.synchronize();
            var watch = Stopwatch.StartNew();
            probe();
            if (cuda) torch.cuda.synchronize();
            if (i > 0) best = Math.Min(best, watch.Elapsed.TotalSeconds); // the first run warms up
        }
        return best;
    }

    static double Bandwidth(long bytes, Action copy, bool cuda) => bytes / Seconds(copy, cuda);

    /// <summary>2·m·h·h FLOPs of an [m, h] × [h, h] product.</summary>
    static double Gemm(int m, int h, ScalarType dt, Device device, bool cuda)
    {
        using var a = torch.randn(m, h, dt, device);
        using var b = torch.randn(h, h, dt, device);
        return 2.0 * m * h * h / Seconds(() => a.matmul(b), cuda);
    }

    /// <summary>Scaled dot-product attention over <paramref name="batch"/> (sequence × head) pairs of head dimension 128, keys
    /// and values stored as <paramref name="stored"/> and read as <paramref name="compute"/>: 4·batch·q·k·128 FLOPs.</summary>
    static double Attention(int batch, int queries, int keys, ScalarType stored, ScalarType compute, Device device, bool cuda)
    {
        const int d = 128;
        using var q = torch.randn(1, batch, queries, d, compute, device);
        using var k = torch.randn(1, batch, keys, d, stored, device);
        using var v = torch.randn(1, batch, keys, d, stored, device);
        return 4.0 * batch * queries * keys * d / Seconds(() => F.scaled_dot_product_attention(q, k.to(compute), v.to(compute)), cuda);
    }

    /// <summary>Bytes of 16-bit weights per second that <see cref="GroupQuantizer.Dequantize"/> restores from
    /// FlexGen's 4-bit groups (what every offloaded stage with compressed weights runs).</summary>
    static double Dequantize(int h, ScalarType dt, Device device, bool cuda)
    {
        using var w = torch.randn(h, h, dt, device);
        using var q = GroupQuantizer.Quantize(w, OffloadedWeights.Compression);
        return (double)h * h * dt.ElementSize() / Seconds(() => GroupQuantizer.Dequantize(q), cuda);
    }

    [DllImport("libc", SetLastError = true)]
    static extern int posix_fadvise(int fd, long offset, long length, int advice);

    /// <summary>Write (flushed to the device) and read (after dropping the file from the page cache) bandwidth.</summary>
    static (double Write, double Read) Disk(string parent, long bytes)
    {
        using var directory = OffloadDirectory.Create(parent);
        using var handle = directory.CreateFile("calibration", bytes);
        var buffer = new byte[Math.Min(bytes, 64L << 20)];
        new Random(1).NextBytes(buffer);
        var watch = Stopwatch.StartNew();
        for (long at = 0; at < bytes; at += buffer.Length) RandomAccess.Write(handle, buffer.AsSpan(0, (int)Math.Min(buffer.Length, bytes - at)), at);
        RandomAccess.FlushToDisk(handle);
        double write = bytes / watch.Elapsed.TotalSeconds;
        DropCache(handle, bytes);
        watch.Restart();
        for (long at = 0; at < bytes; at += buffer.Length) RandomAccess.Read(handle, buffer.AsSpan(0, (int)Math.Min(buffer.Length, bytes - at)), at);
        return (write, bytes / watch.Elapsed.TotalSeconds);
    }

    static void DropCache(SafeFileHandle handle, long bytes)
    {
        if (!OperatingSystem.IsLinux()) return;
        const int DontNeed = 4; // POSIX_FADV_DONTNEED
        posix_fadvise((int)handle.DangerousGetHandle(), 0, bytes, DontNeed);
    }

    static string Gb(double bytesPerSecond) => $"{bytesPerSecond / (1L << 30):0.00} GiB/s";
    static string Tf(double flops) => $"{flops / 1e12:0.000} TFLOP/s";
}
