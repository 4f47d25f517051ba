using Tern.Cli;
using Tern.Offloading;

namespace Tern.Tests.Cli;

/// <summary><c>tern offload plan</c> and the <c>--offload</c> flags: a plan from config.json alone, bad values stopped at parse.</summary>
public sealed class OffloadCommandTests
{
    static (int Code, string Output, string[] Errors) Run(params string[] args)
    {
        var error = new StringWriter();
        var output = new StringWriter();
        var previous = Console.Out;
        Console.SetOut(output);
        try
        {
            int code = Program.Run(args, error);
            return (code, output.ToString(), error.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
        }
        finally
        {
            Console.SetOut(previous);
        }
    }

    [Fact]
    public void PlanPrintsAPolicyThatParsesAndItsPrediction()
    {
        var (code, output, _) = Run("offload", "plan", "--model", Path.Combine(Fixtures.Root, "configs", "opt-30b"),
            "--gpu-mem", "16GB", "--cpu-mem", "100GB", "--prompt", "512", "--gen", "32");
        Assert.Equal(0, code);
        string line = output.Split('\n').Single(l => l.StartsWith("policy:", StringComparison.Ordinal));
        var policy = OffloadPolicy.Parse(line["policy:".Length..].Trim());
        Assert.True(policy.Weights.Cpu > 0.5, line);
        Assert.Contains("tokens/s", output);
    }

    /// <summary>`tern offload plan` with a KV policy keeps the policy's whole cache on one tier and prints a command that
    /// repeats the --kv-* flags.</summary>
    [Fact]
    public void PlanWithAHeavyHitterCacheKeepsItOnOneTierAndRepeatsTheFlags()
    {
        var (code, output, _) = Run("offload", "plan", "--model", Path.Combine(Fixtures.Root, "configs", "opt-30b"),
            "--gpu-mem", "16GB", "--cpu-mem", "100GB", "--prompt", "512", "--gen", "512", "--kv-policy", "h2o", "--kv-budget", "0.2");
        Assert.Equal(0, code);
        var policy = OffloadPolicy.Parse(output.Split('\n').Single(l => l.StartsWith("policy:", StringComparison.Ordinal))["policy:".Length..].Trim());
        Assert.True(policy.Cache.Gpu == 1 || policy.Cache.Cpu == 1, policy.ToString());
        Assert.Contains("--kv-policy h2o --kv-budget 0.2", output);
    }

    /// <summary>Offloaded generation takes sampling, stop and KV flags, as the plain runtime does, and streams.</summary>
    [Fact]
    public void OffloadedGenerationSamplesStopsAndRunsAKvPolicy()
    {
        var (code, output, errors) = Run("generate", "Hello there", "--model", Fixtures.ModelDir("llama-gqa"), "--device", "cpu",
            "--offload", "w=0/100/0,kv=0/100/0,act=0/100/0,gbs=2,ngb=2", "--temperature", "0.8", "--seed", "1", "--top-p", "0.9",
            "--kv-policy", "sink", "--kv-budget", "8", "--kv-sink", "2", "--max-new-tokens", "12", "--stop", "zzz");
        Assert.True(code == 0, string.Join("\n", errors));
        Assert.StartsWith("Hello there", output);
        Assert.True(output.TrimEnd().Length > "Hello there".Length, output);
    }

    /// <summary><c>--soft-prompt</c> with <c>--offload</c>: <c>tern generate</c> prints what it prints in memory with the same
    /// prompt (greedy), also under a KV policy (<c>--kv-policy h2o</c>: the prompt's entries are what the policy keeps of it, as
    /// in memory); <c>tern bench</c> labels its row. A policy over a cache split across tiers stays refused, naming the placements
    /// it needs, as without a prompt.</summary>
    [Fact]
    public void OffloadedGenerationAndBenchRunASoftPrompt()
    {
        using var dir = new TempDir();
        string model = Fixtures.ModelDir("llama-gqa"), file = dir.File("prompt.safetensors");
        using (var loaded = Tern.Models.CausalLanguageModel.Load(model, new Tern.Models.ModelLoadOptions { Device = Tern.Runtime.DeviceKind.Cpu }))
        using (var prompt = Tern.Prompting.SoftPrompt.FromTensor(TorchSharp.torch.randn(new long[] { 3, loaded.TokenEmbeddingWidth }, generator: new TorchSharp.torch.Generator(5))))
            prompt.Save(file);
        string[] common = { "generate", "Hello there", "General Kenobi", "--model", model, "--device", "cpu", "--max-new-tokens", "6", "--no-stream", "--soft-prompt", file };
        var (code, expected, errors) = Run(common);
        Assert.True(code == 0, string.Join("\n", errors));
        (code, var output, errors) = Run(common.Concat(new[] { "--offload", "w=0/50/50,kv=0/100/0,act=0/100/0,gbs=1,ngb=2", "--offload-dir", dir.Path }).ToArray());
        Assert.True(code == 0, string.Join("\n", errors));
        Assert.Equal(expected, output);
        Assert.Contains("General Kenobi", output);

        string csv = dir.File("bench.csv");
        (code, _, errors) = Run("bench", "--model", model, "--device", "cpu", "--prompt", "5", "--new-tokens", "3", "-o", csv, "--soft-prompt", file,
            "--offload", "w=0/100/0,kv=0/100/0,act=0/100/0,gbs=2,ngb=1");
        Assert.True(code == 0, string.Join("\n", errors));
        Assert.Contains("[soft prompt 3]", File.ReadAllText(csv));

        string[] h2o = { "--kv-policy", "h2o", "--kv-budget", "4" };
        (code, expected, errors) = Run(common.Concat(h2o).ToArray());
        Assert.True(code == 0, string.Join("\n", errors));
        (code, output, errors) = Run(common.Concat(h2o).Concat(new[] { "--offload", "w=0/50/50,kv=100/0/0,act=0/100/0,gbs=1,ngb=2", "--offload-dir", dir.Path }).ToArray());
        Assert.True(code == 0, string.Join("\n", errors));
        Assert.Equal(expected, output);
        (code, _, errors) = Run(common.Concat(h2o).Concat(new[] { "--offload", "w=0/100/0,kv=50/50/0,act=0/100/0,gbs=1,ngb=2" }).ToArray());
        Assert.NotEqual(0, code);
        Assert.Contains("kv=0/100/0", string.Join("\n", errors));
    }

    [Theory]
    [InlineData("bench", "--offload", "w=50/40/0", "sum to 100%")]
    [InlineData("generate", "--offload", "gbs=0", "at least 1")]
    [InlineData("bench", "--gpu-mem", "sixteen", "--gpu-mem 'sixteen' is not a size")]
    public void BadOffloadFlagsStopTheParse(string command, string flag, string value, string expected)
    {
        var args = new List<string> { command, "--model", "no/such/folder", flag, value };
        if (flag != "--offload") args.AddRange(new[] { "--offload", "auto" });
        var (code, _, errors) = Run(args.ToArray());
        Assert.Equal(2, code);
        Assert.Contains(expected, errors[0]);
    }

    [Theory]
    [InlineData("16GB", 16L << 30)]
    [InlineData("16GiB", 16L << 30)]
    [InlineData("512MB", 512L << 20)]
    [InlineData("1.5T", 3L << 39)]
    [InlineData("1000", 1000)]
    public void SizesParse(string text, long bytes) => Assert.Equal(bytes, Units.ParseBytes(text, "--gpu-mem"));
}
