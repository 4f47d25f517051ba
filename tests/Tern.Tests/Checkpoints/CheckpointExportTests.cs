using System.Text.Json.Nodes;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Checkpoints;

public class CheckpointExportTests
{
    static Tensor Logits(string folder, ModelDType dtype)
    {
        using var model = CausalLanguageModel.Load(folder, new ModelLoadOptions { Device = DeviceKind.Cpu, DType = dtype });
        var batch = ForwardBatch.LeftPadded(new[] { new[] { 3, 17, 42, 8, 99, 5 } }, torch.CPU);
        using var cache = model.CreateCache(1, 6, maxStepTokens: 6);
        return model.Forward(batch, cache).to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    [Fact]
    public void Bf16ShardsLoadAndGiveTheLogitsOfTheSourceLoadedAsBf16()
    {
        using var dir = new TempDir();
        string source = Fixtures.ModelDir("llama-gqa"), output = dir.File("bf16");
        var reports = new List<double>();
        var written = CheckpointExport.Run(source, output, new ExportOptions
        {
            DType = ModelDType.BFloat16, MaxShardBytes = 40_000, Progress = new Tern.Cli.Commands.SyncProgress<double>(reports.Add),
        });
        // Progress: one report a tensor, then the write, rising to 1 at the end.
        Assert.True(reports.Count > 3 && reports[^1] == 1.0, $"{reports.Count} progress reports, the last {reports.LastOrDefault()}");
        Assert.True(reports.Zip(reports.Skip(1)).All(p => p.Second >= p.First), "progress never goes back");

        Assert.True(written.Count >= 3, $"expected shards and an index, got {written.Count} files");
        Assert.EndsWith(CheckpointReader.IndexFileName, written[^1]);
        Assert.All(written.SkipLast(1), f => Assert.True(new FileInfo(f).Length <= 40_000 + 4096, $"{f} is {new FileInfo(f).Length} bytes"));
        using (var reader = CheckpointReader.Open(output))
        using (var sourceReader = CheckpointReader.Open(source))
        {
            Assert.Equal(sourceReader.Names.Order(), reader.Names.Order());
            Assert.All(reader.Names, n => Assert.Equal("BF16", reader.Info(n).Dtype.ToString()));
        }
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "config.json")))!;
        Assert.Equal("bfloat16", (config["dtype"] ?? config["torch_dtype"])!.ToString());
        Assert.True(File.Exists(Path.Combine(output, "tokenizer.json")) == File.Exists(Path.Combine(source, "tokenizer.json")));

        using var scope = torch.NewDisposeScope();
        // bf16 from the file and bf16 cast at load are the same rounding: identical logits.
        Assert.True(Logits(output, ModelDType.BFloat16).eq(Logits(source, ModelDType.BFloat16)).all().item<bool>());
        // In fp32 the exported weights differ from the source's by that rounding only.
        var exported = Logits(output, ModelDType.Float32);
        var original = Logits(source, ModelDType.Float32);
        double error = (exported - original).abs().max().item<float>();
        Assert.True(error is > 0 and < 0.05, $"max difference {error}");
    }

    [Fact]
    public void ExportingIntoTheSourceFolderIsRefused()
    {
        string source = Fixtures.ModelDir("llama-gqa");
        var e = Assert.Throws<ArgumentException>(() => CheckpointExport.Run(source, source + "/", new ExportOptions()));
        Assert.Contains("must differ", e.Message);
    }

    [Theory]
    [InlineData("15MB", 15_000_000L)]
    [InlineData("2GB", 2_000_000_000L)]
    [InlineData("500KiB", 512_000L)]
    [InlineData("1.5MiB", 1_572_864L)]
    [InlineData("4096", 4096L)]
    public void SizesParseAsTransformersWritesThem(string text, long bytes) => Assert.Equal(bytes, CheckpointExport.ParseSize(text));

    [Theory]
    [InlineData("15XB")]
    [InlineData("-3MB")]
    [InlineData("MB")]
    public void BadSizesAreRefused(string text) => Assert.Throws<ArgumentException>(() => CheckpointExport.ParseSize(text));
}
