using System.CommandLine;
using Tern.Offloading;
using Tern.Runtime;

namespace Tern.Cli.Commands;

/// <summary>The FlexGen offloading flags of <c>tern generate</c>, <c>tern bench</c> and <c>tern offload plan</c>.</summary>
internal sealed class OffloadFlags
{
    public Option<string?> Offload { get; } = new("--offload")
    {
        Description = "Run offloaded (FlexGen): 'auto' (the cost model's LP picks the policy) or a policy such as " +
                      "w=20/80/0,kv=0/100/0,act=0/100/0,gbs=48,ngb=3 (GPU/CPU/disk percentages; also wbits=4, overlap=off).",
    };
    public Option<string?> GpuMemory { get; } = new("--gpu-mem") { Description = "GPU memory Tern may place data in, e.g. 16GB (enforced; emulates a smaller card). Default: the card's free memory." };
    public Option<string?> CpuMemory { get; } = new("--cpu-mem") { Description = "Host memory the plan may use, e.g. 100GB (default: what the OS reports available)." };
    public Option<string?> DiskMemory { get; } = new("--disk-mem") { Description = "Disk space the plan may use, e.g. 1TB (default: free space under --offload-dir, 0 without it)." };
    public Option<string?> Directory { get; } = new("--offload-dir") { Description = "Folder for the disk tier (a private subfolder is made and removed)." };
    public Option<string?> Profile { get; } = new("--profile") { Description = "Hardware profile from `tern offload calibrate` (default: FlexGen's T4 constants, labelled as such)." };
    public Option<bool> Compress { get; } = new("--compress-weights") { Description = "With --offload auto / plan: 4-bit group-quantized weights." };
    public Option<bool> CpuAttention { get; } = new("--cpu-attention") { Description = "With --offload auto / plan: decode attention on the CPU where the cache lives (the whole cache in host memory)." };

    public void AddTo(Command command, bool withOffload = true)
    {
        var options = new List<Option> { GpuMemory, CpuMemory, DiskMemory, Directory, Profile, Compress, CpuAttention };
        if (withOffload) options.Insert(0, Offload);
        foreach (var o in options) command.Options.Add(o);
        command.Validators.Add(result =>
        {
            try
            {
                if (withOffload && result.GetValue(Offload) is { } text && text != "auto") OffloadPolicy.Parse(text);
                foreach (var (o, name) in new[] { (GpuMemory, "--gpu-mem"), (CpuMemory, "--cpu-mem"), (DiskMemory, "--disk-mem") })
                    if (result.GetValue(o) is { } size) Units.ParseBytes(size, name);
            }
            catch (Exception e) when (e is ArgumentException or NotSupportedException)
            {
                result.AddError(CliErrors.Message(e));
            }
        });
    }

    public bool Enabled(ParseResult r) => r.GetValue(Offload) is not null;

    public HardwareProfile Hardware(ParseResult r, TextWriter log)
    {
        if (r.GetValue(Profile) is { } path) return HardwareProfile.Load(path);
        log.WriteLine($"hardware: no --profile; predictions use {HardwareProfile.FlexGenT4.Source}");
        return HardwareProfile.FlexGenT4;
    }

    /// <summary>The memory the plan may use on each tier.</summary>
    public MemoryCapacity Capacity(ParseResult r, TorchSharp.torch.Device device)
    {
        long gpu = r.GetValue(GpuMemory) is { } g ? Units.ParseBytes(g, "--gpu-mem")
            : DeviceReport.FreeBytes(device) / (device.type == TorchSharp.DeviceType.CUDA ? 1 : 4); // CPU compute: the "GPU" tier is host memory too
        long cpu = r.GetValue(CpuMemory) is { } c ? Units.ParseBytes(c, "--cpu-mem") : GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        string? dir = r.GetValue(Directory);
        long disk = r.GetValue(DiskMemory) is { } d ? Units.ParseBytes(d, "--disk-mem")
            : dir is not null && System.IO.Directory.Exists(dir) ? new DriveInfo(Path.GetFullPath(dir)).AvailableFreeSpace : 0;
        return new MemoryCapacity(gpu, cpu, disk);
    }

    /// <summary>The policy (from the flag, or from the search for 'auto'), the options to run it and the cost model's prediction.</summary>
    /// <param name="kvCache">The KV cache the sequences run over: the search sizes the block by what it keeps (and keeps a
    /// non-plain cache whole, as the engine needs).</param>
    public (OffloadOptions Options, Prediction Prediction) Resolve(ParseResult r, string folder, ModelDType dtype, TorchSharp.torch.Device device,
        int prompt, int generate, TextWriter log, Tern.Caching.KvCacheConfig? kvCache = null)
    {
        var workload = OffloadWorkload.FromConfig(folder, dtype, prompt, generate);
        if (kvCache is not null) workload = workload.WithKvPolicy(kvCache);
        var hardware = Hardware(r, log);
        var capacity = Capacity(r, device);
        OffloadPolicy policy;
        if (r.GetValue(Offload) is "auto" or null)
            policy = PolicySearch.Find(Plan(r, workload, hardware, capacity) with { WholeCache = OffloadedModel.NeedsResidentCache(kvCache) }).Policy;
        else policy = OffloadPolicy.Parse(r.GetValue(Offload)!);
        var prediction = new CostModel(workload, hardware, policy.CompressWeights, policy.CpuAttention, policy.CompressCache).Predict(policy);
        var options = new OffloadOptions
        {
            Policy = policy,
            Directory = r.GetValue(Directory),
            GpuMemoryLimit = r.GetValue(GpuMemory) is { } g ? Units.ParseBytes(g, "--gpu-mem") : null,
        };
        return (options, prediction);
    }

    /// <summary>What the policy search works with, from the flags.</summary>
    public PlanOptions Plan(ParseResult r, OffloadWorkload workload, HardwareProfile hardware, MemoryCapacity capacity) => new()
    {
        Workload = workload, Hardware = hardware, Capacity = capacity, CompressWeights = r.GetValue(Compress), CpuAttention = r.GetValue(CpuAttention),
    };

    /// <summary>A readable table of a policy and its prediction.</summary>
    public static void Print(TextWriter o, OffloadPolicy p, Prediction pred)
    {
        o.WriteLine($"policy:     {p}");
        o.WriteLine($"block:      gbs {p.GpuBatchSize} × ngb {p.NumGpuBatches} = {p.BlockSize} sequences; weights {(p.CompressWeights ? "4-bit" : "16-bit")}; " +
                    $"decode attention on the {(p.CpuAttention ? "CPU" : "GPU")}; overlap {(p.Overlap ? "on" : "off")}");
        o.WriteLine($"{"",-12}{"GPU",7}{"CPU",7}{"disk",7}");
        foreach (var (name, f) in new[] { ("weights", p.Weights), ("KV cache", p.Cache), ("activations", p.Activations) })
            o.WriteLine($"{name,-12}{Pct(f.Gpu),7}{Pct(f.Cpu),7}{Pct(f.Disk),7}");
        o.WriteLine($"peak memory: GPU {Units.Bytes(pred.GpuPeakBytes)}, CPU {Units.Bytes(pred.CpuPeakBytes)}, disk {Units.Bytes(pred.DiskPeakBytes)}");
        o.WriteLine($"predicted:  prefill {pred.PrefillLayerSeconds * 1e3:F2} ms/layer, decode {pred.DecodeLayerSeconds * 1e3:F2} ms/layer, " +
                    $"block {pred.TotalSeconds:F1} s, throughput {pred.TokensPerSecond:F2} tokens/s");
    }

    static string Pct(double f) => $"{f * 100:0.#}%";
}
