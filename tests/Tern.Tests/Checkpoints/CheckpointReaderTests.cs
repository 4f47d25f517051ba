using System.Text.Json;
using Tern.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Checkpoints;

public sealed class CheckpointReaderTests
{
    [Fact]
    public void OpensEveryModelFixture()
    {
        foreach (var model in Fixtures.ModelNames)
        {
            using var reader = CheckpointReader.Open(Fixtures.ModelDir(model));
            Assert.NotEmpty(reader.Names);
            Assert.Contains(reader.Directory, reader.Description);
        }
    }

    [Fact]
    public void ShardedFixtureFollowsTheIndex()
    {
        string dir = Fixtures.ModelDir("llama-gqa");
        using var reader = CheckpointReader.Open(dir);
        Assert.Equal(Path.Combine(dir, CheckpointReader.IndexFileName), reader.IndexPath);
        Assert.Equal(4, reader.Files.Count);
        Assert.Contains("4 shards", reader.Description);

        using var index = JsonDocument.Parse(File.ReadAllBytes(reader.IndexPath!));
        var weightMap = index.RootElement.GetProperty("weight_map").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
        Assert.Equal(weightMap.Keys.Order(StringComparer.Ordinal), reader.Names);
        foreach (var (name, shard) in weightMap)
        {
            var info = reader.Info(name);
            Assert.Equal(Path.Combine(dir, shard), info.FilePath);
            using var t = reader.Load(name, info.ShapeArray(), ScalarType.Float32, torch.CPU);
            Assert.Equal(info.Shape, t.shape);
            Assert.Equal(ScalarType.Float32, t.dtype);
        }
    }

    [Fact]
    public void LoadConvertsDtype()
    {
        using var reader = CheckpointReader.Open(Fixtures.ModelDir("llama3-tied-bf16"));
        var info = reader.Info("model.embed_tokens.weight");
        Assert.Equal(SafetensorsDtype.BF16, info.Dtype);
        using var f16 = reader.Load(info.Name, info.ShapeArray(), ScalarType.Float16, torch.CPU);
        Assert.Equal(ScalarType.Float16, f16.dtype);
        using var stored = reader.LoadAsStored(info.Name);
        Assert.Equal(ScalarType.BFloat16, stored.dtype);
    }

    [Fact]
    public void ShapeMismatchNamesTensorFileAndShapes()
    {
        string dir = Fixtures.ModelDir("llama3-tied-bf16");
        using var reader = CheckpointReader.Open(dir);
        var ex = Assert.Throws<CheckpointException>(() => reader.Load("model.embed_tokens.weight", [128, 64], ScalarType.Float32, torch.CPU));
        Assert.Contains("'model.embed_tokens.weight'", ex.Message);
        Assert.Contains(Path.Combine(dir, "model.safetensors"), ex.Message);
        Assert.Contains("[128, 32]", ex.Message);
        Assert.Contains("[128, 64]", ex.Message);
    }

    [Fact]
    public void MissingTensorNamesTheCheckpointAndSuggests()
    {
        using var reader = CheckpointReader.Open(Fixtures.ModelDir("llama3-tied-bf16"));
        Assert.False(reader.Contains("embed_tokens.weight"));
        var ex = Assert.Throws<CheckpointException>(() => reader.Load("embed_tokens.weight", [128, 32], ScalarType.Float32, torch.CPU));
        Assert.Contains("'embed_tokens.weight'", ex.Message);
        Assert.Contains("model.safetensors in", ex.Message);
        Assert.Contains("'model.embed_tokens.weight'", ex.Message);
    }

    [Fact]
    public void LoneSafetensorsFileWithoutIndexIsUsed()
    {
        using var dir = new TempDir();
        File.Copy(Path.Combine(Fixtures.ModelDir("qwen2"), "model.safetensors"), dir.File("weights.safetensors"));
        using var reader = CheckpointReader.Open(dir.Path);
        Assert.Contains("weights.safetensors", reader.Description);
        Assert.NotEmpty(reader.Names);
    }

    [Fact]
    public void SeveralSafetensorsFilesWithoutIndexAreRefused()
    {
        using var dir = new TempDir();
        string src = Fixtures.ModelDir("llama-gqa");
        foreach (var f in Directory.EnumerateFiles(src, "model-*.safetensors"))
        {
            File.Copy(f, dir.File(Path.GetFileName(f)));
        }
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(dir.Path));
        Assert.Contains(dir.Path, ex.Message);
        Assert.Contains("4 .safetensors files", ex.Message);
        Assert.Contains(CheckpointReader.IndexFileName, ex.Message);
    }

    static TempDir CopyOfShardedFixture()
    {
        var dir = new TempDir();
        foreach (var f in Directory.EnumerateFiles(Fixtures.ModelDir("llama-gqa")))
        {
            File.Copy(f, dir.File(Path.GetFileName(f)));
        }
        return dir;
    }

    [Fact]
    public void IndexPointingToAMissingShard()
    {
        using var dir = CopyOfShardedFixture();
        File.Delete(dir.File("model-00003-of-00004.safetensors"));
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(dir.Path));
        Assert.Contains(dir.File(CheckpointReader.IndexFileName), ex.Message);
        Assert.Contains("model-00003-of-00004.safetensors", ex.Message);
        Assert.Contains("does not exist", ex.Message);
    }

    static void RewriteIndex(TempDir dir, Action<Dictionary<string, string>> edit)
    {
        string path = dir.File(CheckpointReader.IndexFileName);
        using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
        var map = doc.RootElement.GetProperty("weight_map").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
        edit(map);
        File.WriteAllText(path, JsonSerializer.Serialize(new { metadata = new { total_size = 1 }, weight_map = map }));
    }

    [Fact]
    public void TensorMissingFromItsShard()
    {
        using var dir = CopyOfShardedFixture();
        RewriteIndex(dir, map => map["model.norm.weight"] = "model-00001-of-00004.safetensors");
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(dir.Path));
        Assert.Contains(dir.File(CheckpointReader.IndexFileName), ex.Message);
        Assert.Contains("'model.norm.weight'", ex.Message);
        Assert.Contains(dir.File("model-00001-of-00004.safetensors"), ex.Message);
        Assert.Contains("no tensor of that name", ex.Message);
    }

    [Theory]
    [InlineData("../model-00001-of-00004.safetensors", "outside the model folder")]
    [InlineData("/etc/passwd", "not a file name inside the model folder")]
    [InlineData("", "not a file name inside the model folder")]
    public void ShardNamesMayNotEscapeTheFolder(string shard, string fragment)
    {
        using var dir = CopyOfShardedFixture();
        RewriteIndex(dir, map => map["model.norm.weight"] = shard);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(dir.Path));
        Assert.Contains(dir.File(CheckpointReader.IndexFileName), ex.Message);
        Assert.Contains(fragment, ex.Message);
    }

    [Theory]
    [InlineData("{", "not valid JSON")]
    [InlineData("[]", "not a JSON object")]
    [InlineData("{\"metadata\":{}}", "no weight_map")]
    [InlineData("{\"weight_map\":[]}", "weight_map must be an object")]
    [InlineData("{\"weight_map\":{\"a\":1}}", "weight_map entry 'a'")]
    [InlineData("{\"weight_map\":{}}", "weight_map is empty")]
    [InlineData("{\"weight_map\":{\"a\":\"model-00001-of-00004.safetensors\",\"a\":\"model-00001-of-00004.safetensors\"}}", "lists tensor 'a' twice")]
    public void BadIndexFiles(string json, string fragment)
    {
        using var dir = CopyOfShardedFixture();
        File.WriteAllText(dir.File(CheckpointReader.IndexFileName), json);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(dir.Path));
        Assert.Contains(dir.File(CheckpointReader.IndexFileName), ex.Message);
        Assert.Contains(fragment, ex.Message);
    }

    /// <summary>An index whose text is not Unicode — invalid UTF-8 bytes in a tensor name, or a lone surrogate escaped in a
    /// shard name — names the index (issue 18: "Cannot transcode invalid UTF-8 JSON text", without the file).</summary>
    [Theory]
    [InlineData(new byte[] { 0xFF, 0xFE }, "model.norm.weight")]
    [InlineData(new byte[] { (byte)'\\', (byte)'u', (byte)'d', (byte)'8', (byte)'0', (byte)'0' }, "model-00001-of-00004.safetensors")]
    public void AnIndexThatIsNotUnicodeNamesTheFile(byte[] inserted, string after)
    {
        using var dir = CopyOfShardedFixture();
        string path = dir.File(CheckpointReader.IndexFileName);
        byte[] bytes = File.ReadAllBytes(path);
        int at = bytes.AsSpan().IndexOf(System.Text.Encoding.UTF8.GetBytes("\"" + after + "\"")) + 1;
        Assert.True(at > 0, $"the fixture's index has no \"{after}\"");
        File.WriteAllBytes(path, [.. bytes[..at], .. inserted, .. bytes[at..]]);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(dir.Path));
        Assert.Contains(path, ex.Message);
        Assert.Contains("UTF-8", ex.Message);
    }

    [Fact]
    public void InvalidShardNamesTheShard()
    {
        using var dir = CopyOfShardedFixture();
        string shard = dir.File("model-00002-of-00004.safetensors");
        byte[] bytes = File.ReadAllBytes(shard);
        File.WriteAllBytes(shard, bytes[..^1]);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(dir.Path));
        Assert.Contains(shard, ex.Message);
    }

    [Theory]
    [InlineData("pytorch_model.bin")]
    [InlineData("model.pt")]
    [InlineData("weights.pth")]
    [InlineData("last.ckpt")]
    public void PickleOnlyFolderIsRefusedWithConversionAdvice(string pickle)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), "{}");
        File.WriteAllBytes(dir.File(pickle), [0x80, 0x02]);
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(dir.Path));
        Assert.Contains(dir.Path, ex.Message);
        Assert.Contains(pickle, ex.Message);
        Assert.Contains("arbitrary code", ex.Message);
        Assert.Contains("safe_serialization=True", ex.Message);
    }

    [Fact]
    public void EmptyFolder()
    {
        using var dir = new TempDir();
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(dir.Path));
        Assert.Contains(dir.Path, ex.Message);
        Assert.Contains("no model weights", ex.Message);
        Assert.Contains(CheckpointReader.SingleFileName, ex.Message);
    }

    [Fact]
    public void MissingFolder()
    {
        using var dir = new TempDir();
        string missing = dir.File("nope");
        var ex = Assert.Throws<CheckpointException>(() => CheckpointReader.Open(missing));
        Assert.Contains(missing, ex.Message);
        Assert.Contains("not found", ex.Message);
    }

    [Fact]
    public void DisposeReleasesTheMappings()
    {
        using var dir = CopyOfShardedFixture();
        var reader = CheckpointReader.Open(dir.Path);
        reader.Dispose();
        reader.Dispose();
        Assert.Throws<ObjectDisposedException>(() => reader.Load("model.norm.weight", [32], ScalarType.Float32, torch.CPU));
        // The files are no longer held: they can be replaced and deleted.
        foreach (var f in Directory.EnumerateFiles(dir.Path))
        {
            File.Delete(f);
        }
    }
}
