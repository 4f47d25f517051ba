using Tern.Checkpoints;
using Tern.Generation;
using Tern.Models;
using Tern.Runtime;
using Tern.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Models;

/// <summary>
/// The shipped default model (<c>models/default</c>: sharded bf16 safetensors + index, trained by <c>tern train</c>) against the
/// transformers reference made on the GPU machine by tools/gpu/default_model_reference.py
/// (tests/fixtures/default-model-reference.safetensors): the same token ids, fp32 logits within 1e-4, the same greedy tokens.
/// </summary>
public class DefaultModelTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static string ModelDir => Path.GetFullPath(Path.Combine(Fixtures.Root, "..", "..", "models", "default"));

    [Fact]
    public void TernMatchesTransformersOnTheShippedModel()
    {
        using var reference = SafetensorsFile.Open(Path.Combine(Fixtures.Root, "default-model-reference.safetensors"));
        string[] prompts = reference.Metadata["prompts"].Split('\n');
        int last = int.Parse(reference.Metadata["last_positions"]), newTokens = int.Parse(reference.Metadata["new_tokens"]);
        using var model = CausalLanguageModel.Load(ModelDir, new ModelLoadOptions { Device = DeviceKind.Cpu, DType = ModelDType.Float32 });
        var tokenizer = TernTokenizer.Load(ModelDir);
        var generator = new Tern.Generation.Generator(model, tokenizer);
        for (int i = 0; i < prompts.Length; i++)
        {
            using var scope = torch.NewDisposeScope();
            long[] expectedIds = reference.Load($"input_ids_{i}").data<long>().ToArray();
            int[] ids = tokenizer.Encode(prompts[i]).ToArray();
            Assert.Equal(expectedIds.Select(x => (int)x), ids);

            var logits = HfParityContract.FullLogits(model, new[] { expectedIds })[0];
            var tail = logits.narrow(0, logits.shape[0] - last, last);
            double diff = HfParityContract.MaxAbsDiff(tail, reference.Load($"logits_{i}"));
            Assert.True(diff <= 1e-4, $"prompt {i}: max |Δlogit| = {diff:E2}");

            long[] greedy = reference.Load($"greedy_{i}").data<long>().ToArray()[ids.Length..];
            var tokens = generator.GenerateTokens(new[] { ids }, new GenerationOptions { MaxNewTokens = newTokens, IgnoreEos = true }, cancellation: Ct).Sequences[0].Tokens;
            Assert.Equal(greedy.Select(x => (int)x), tokens);
        }
    }

    [Fact]
    public void TheShippedModelIsShardedBf16WithinTheSizeBudget()
    {
        using var reader = CheckpointReader.Open(ModelDir);
        Assert.NotNull(reader.IndexPath);
        Assert.True(reader.Files.Count >= 2);
        Assert.All(reader.Files, f => Assert.True(f.FileLength <= 15_000_000, $"{f.Path}: {f.FileLength} bytes > 15 MB"));
        Assert.All(reader.Names, n => Assert.Equal("BF16", reader.Info(n).Dtype.ToString()));
        long folderBytes = Directory.EnumerateFiles(ModelDir).Sum(f => new FileInfo(f).Length);
        Assert.True(folderBytes <= 32_000_000, $"models/default holds {folderBytes} bytes");
    }
}
