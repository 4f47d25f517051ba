using System.Text;
using System.Text.Json;
using Tern.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Checkpoints;

public sealed class SafetensorsWriterTests
{
    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Int64)]
    [InlineData(ScalarType.Int32)]
    [InlineData(ScalarType.Bool)]
    [InlineData(ScalarType.Byte)]
    [InlineData(ScalarType.Float64)]
    public void RoundTrips(ScalarType dtype)
    {
        using var dir = new TempDir();
        using var scope = torch.NewDisposeScope();
        var gen = new Generator(7);
        var a = (torch.randn([3, 5], generator: gen) * 100).to(dtype);
        var b = (torch.randn([7], generator: gen) * 100).to(dtype);
        var scalar = torch.tensor(3.0).to(dtype);
        var empty = torch.empty([0, 4], dtype);
        string path = dir.File("rt.safetensors");
        var meta = new Dictionary<string, string> { ["note"] = "héllo \"quoted\" +<>", ["format"] = "pt" };
        SafetensorsWriter.Write(path, [("layer.a", a), ("layer.b", b), ("scalar", scalar), ("empty", empty)], meta);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(["layer.a", "layer.b", "scalar", "empty"], file.Names);
        Assert.Equal(meta["note"], file.Metadata["note"]);
        Assert.Equal(SafetensorsDtypes.FromScalarType(dtype), file.Info("layer.a").Dtype);
        Assert.Equal(0, (8 + file.HeaderLength) % 8);
        foreach (var (name, expected) in new[] { ("layer.a", a), ("layer.b", b), ("scalar", scalar), ("empty", empty) })
        {
            var t = file.Load(name);
            Assert.Equal(dtype, t.dtype);
            Assert.Equal(expected.shape, t.shape);
            Assert.True(expected.Equals(t), name);
        }
    }

    [Fact]
    public void HeaderIsPaddedWithSpacesAndAddsFormat()
    {
        using var dir = new TempDir();
        using var t = torch.ones(3);
        string path = dir.File("p.safetensors");
        SafetensorsWriter.Write(path, [("x", t)]);
        byte[] bytes = File.ReadAllBytes(path);
        long n = BitConverter.ToInt64(bytes, 0);
        Assert.Equal(0, n % 8);
        string header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        Assert.StartsWith("{\"__metadata__\":{\"format\":\"pt\"},\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", header);
        Assert.Equal(8 + n + 12, bytes.Length);
        Assert.Empty(Directory.EnumerateFiles(dir.Path, "*.tmp"));
    }

    [Fact]
    public void NonContiguousTensorsAreWrittenInLogicalOrder()
    {
        using var dir = new TempDir();
        using var scope = torch.NewDisposeScope();
        var t = torch.arange(6, ScalarType.Float32).reshape(2, 3).t();
        Assert.False(t.is_contiguous());
        string path = dir.File("nc.safetensors");
        SafetensorsWriter.Write(path, [("t", t)]);
        using var file = SafetensorsFile.Open(path);
        var back = file.Load("t");
        Assert.True(t.Equals(back));
        Assert.Equal([0f, 3f, 1f, 4f, 2f, 5f], back.data<float>().ToArray());
    }

    [Fact]
    public void OverwritesAtomicallyAndLeavesNoTempFiles()
    {
        using var dir = new TempDir();
        string path = dir.File("w.safetensors");
        using var a = torch.zeros(4);
        using var b = torch.ones(8);
        SafetensorsWriter.Write(path, [("a", a)]);
        SafetensorsWriter.Write(path, [("b", b)]);
        using (var file = SafetensorsFile.Open(path))
        {
            Assert.Equal(["b"], file.Names);
        }
        Assert.Single(Directory.EnumerateFiles(dir.Path));
    }

    [Fact]
    public void FailedWriteLeavesTheOldFileAndNoTemp()
    {
        using var dir = new TempDir();
        string path = dir.File("w.safetensors");
        using var a = torch.zeros(4);
        SafetensorsWriter.Write(path, [("a", a)]);
        byte[] before = File.ReadAllBytes(path);
        using var complex = torch.zeros(2, ScalarType.ComplexFloat32);
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(path, [("a", a), ("c", complex)]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(path, [("a", a), ("a", a)]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(path, [("__metadata__", a)]));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Single(Directory.EnumerateFiles(dir.Path));
    }

    [Fact]
    public void WriteShardedSplitsAndWritesAnIndex()
    {
        using var dir = new TempDir();
        using var scope = torch.NewDisposeScope();
        var tensors = Enumerable.Range(0, 5).Select(i => ($"layers.{i}.weight", torch.full([10], (float)i))).ToList(); // 40 bytes each
        tensors.Add(("big", torch.ones(30, ScalarType.Float64))); // 240 bytes: a shard of its own
        var written = SafetensorsWriter.WriteSharded(dir.Path, tensors, maxShardBytes: 100);
        // 40+40 | 40+40 | 40 | 240
        Assert.Equal(5, written.Count);
        Assert.Equal(dir.File("model-00001-of-00004.safetensors"), written[0]);
        Assert.Equal(dir.File(CheckpointReader.IndexFileName), written[^1]);

        using var index = JsonDocument.Parse(File.ReadAllBytes(written[^1]));
        Assert.Equal(5 * 40 + 240, index.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
        Assert.Equal("model-00004-of-00004.safetensors", index.RootElement.GetProperty("weight_map").GetProperty("big").GetString());

        using var reader = CheckpointReader.Open(dir.Path);
        Assert.Equal(4, reader.Files.Count);
        foreach (var (name, t) in tensors)
        {
            var back = reader.LoadAsStored(name);
            Assert.True(t.Equals(back), name);
        }
    }

    [Fact]
    public void WriteShardedWritesOneFileWhenItFitsAndCleansTheOtherLayout()
    {
        using var dir = new TempDir();
        using var scope = torch.NewDisposeScope();
        var tensors = new List<(string, Tensor)> { ("a", torch.ones(10)), ("b", torch.zeros(10)) };
        SafetensorsWriter.WriteSharded(dir.Path, tensors, maxShardBytes: 40);
        Assert.True(File.Exists(dir.File(CheckpointReader.IndexFileName)));

        var written = SafetensorsWriter.WriteSharded(dir.Path, tensors, maxShardBytes: 1 << 20, new Dictionary<string, string> { ["k"] = "v" });
        Assert.Equal([dir.File("model.safetensors")], written);
        Assert.Equal(["model.safetensors"], Directory.EnumerateFiles(dir.Path).Select(Path.GetFileName));
        using var reader = CheckpointReader.Open(dir.Path);
        Assert.Null(reader.IndexPath);
        Assert.Equal("v", reader.Files[0].Metadata["k"]);
        Assert.Equal("pt", reader.Files[0].Metadata["format"]);
    }

    [Fact]
    public void ChunkedWriteMatchesWholeWrite()
    {
        using var scope = torch.NewDisposeScope();
        var t = torch.arange(1000, ScalarType.Int32);
        using var whole = new MemoryStream();
        using var chunked = new MemoryStream();
        TensorBytes.WriteTo(t, whole);
        TensorBytes.WriteTo(t, chunked, chunkBytes: 36);
        Assert.Equal(4000, whole.Length);
        Assert.Equal(whole.ToArray(), chunked.ToArray());
    }
}
