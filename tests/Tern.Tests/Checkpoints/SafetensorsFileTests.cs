using System.Text;
using Tern.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Checkpoints;

public sealed class SafetensorsFileTests
{
    // A valid 3-tensor file: a F32 [2, 2] (16 bytes), b I64 [1] (8 bytes), c BF16 [2] (4 bytes).
    const string ValidHeader =
        "{\"__metadata__\":{\"format\":\"pt\"}," +
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}," +
        "\"b\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[16,24]}," +
        "\"c\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[24,28]}}";

    static byte[] ValidData()
    {
        var data = new byte[28];
        var floats = new float[] { 1, 2, 3, 4 };
        Buffer.BlockCopy(floats, 0, data, 0, 16);
        BitConverter.TryWriteBytes(data.AsSpan(16), 42L);
        BitConverter.TryWriteBytes(data.AsSpan(24), (ushort)0x3F80); // 1.0 in bfloat16
        BitConverter.TryWriteBytes(data.AsSpan(26), (ushort)0xC000); // -2.0
        return data;
    }

    [Fact]
    public void ReadsAValidFile()
    {
        using var dir = new TempDir();
        string path = Raw.Save(dir, "ok.safetensors", Raw.File(ValidHeader, ValidData()));
        using var file = SafetensorsFile.Open(path);

        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal(["a", "b", "c"], file.Names);
        var a = file.Info("a");
        Assert.Equal(SafetensorsDtype.F32, a.Dtype);
        Assert.Equal([2L, 2L], a.Shape);
        Assert.Equal(16, a.ByteLength);
        Assert.Equal(8 + file.HeaderLength, a.FileOffset);

        using var ta = file.Load("a");
        Assert.Equal(ScalarType.Float32, ta.dtype);
        Assert.Equal([1f, 2f, 3f, 4f], ta.data<float>().ToArray());
        using var tb = file.Load("b");
        Assert.Equal(42L, tb.item<long>());
        using var tc = file.Load("c", ScalarType.Float32);
        Assert.Equal([1f, -2f], tc.data<float>().ToArray());
        using var tc16 = file.Load("c");
        Assert.Equal(ScalarType.BFloat16, tc16.dtype);
    }

    [Fact]
    public void AcceptsAnEmptyFileWithoutTensorsAndNullMetadata()
    {
        using var dir = new TempDir();
        string path = Raw.Save(dir, "empty.safetensors", Raw.File("{\"__metadata__\":null}   "));
        using var file = SafetensorsFile.Open(path);
        Assert.Empty(file.Tensors);
        Assert.Empty(file.Metadata);
    }

    [Fact]
    public void ZeroSizedAndScalarTensorsLoad()
    {
        using var dir = new TempDir();
        var data = new byte[4];
        BitConverter.TryWriteBytes(data, 7);
        string path = Raw.Save(dir, "z.safetensors", Raw.File(
            "{\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},\"s\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}", data));
        using var file = SafetensorsFile.Open(path);
        using var e = file.Load("e");
        Assert.Equal([0L, 3L], e.shape);
        using var s = file.Load("s");
        Assert.Empty(s.shape);
        Assert.Equal(7, s.item<int>());
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama3-tied-bf16")]
    [InlineData("llama-linear-relu-f16")]
    [InlineData("qwen2")]
    public void FixtureTensorsLoadBitExact(string model)
    {
        string path = Path.Combine(Fixtures.ModelDir(model), "model.safetensors");
        byte[] raw = File.ReadAllBytes(path);
        using var file = SafetensorsFile.Open(path);
        Assert.NotEmpty(file.Tensors);
        foreach (var info in file.Tensors)
        {
            using var t = file.Load(info.Name);
            Assert.Equal(info.Shape, t.shape);
            Assert.Equal(info.Dtype, SafetensorsDtypes.FromScalarType(t.dtype));
            Assert.True(raw.AsSpan((int)info.FileOffset, (int)info.ByteLength).SequenceEqual(t.bytes), info.Name);
        }
    }

    [Fact]
    public void Bf16FixtureConvertsToFloat32()
    {
        using var file = SafetensorsFile.Open(Path.Combine(Fixtures.ModelDir("llama3-tied-bf16"), "model.safetensors"));
        var info = file.Tensors[0];
        Assert.Equal(SafetensorsDtype.BF16, info.Dtype);
        using var bf = file.Load(info.Name);
        using var f32 = file.Load(info.Name, ScalarType.Float32, torch.CPU);
        Assert.Equal(ScalarType.Float32, f32.dtype);
        using var expected = bf.to(ScalarType.Float32);
        Assert.True(expected.Equals(f32));
    }

    [Fact]
    public void F16FixtureHasF16Tensors()
    {
        using var file = SafetensorsFile.Open(Path.Combine(Fixtures.ModelDir("llama-linear-relu-f16"), "model.safetensors"));
        Assert.Contains(file.Tensors, t => t.Dtype == SafetensorsDtype.F16);
    }

    [Fact]
    public void ReferenceFileExposesMetadataAndI64()
    {
        using var file = SafetensorsFile.Open(Path.Combine(Fixtures.ModelDir("llama-gqa"), "reference.safetensors"));
        Assert.Equal("3", file.Metadata["seed"]);
        var mask = file.Info("attention_mask");
        Assert.Equal(SafetensorsDtype.I64, mask.Dtype);
        using var t = file.Load("attention_mask");
        Assert.Equal([3L, 12L], t.shape);
        Assert.True(t.ge(0).all().item<bool>() && t.le(1).all().item<bool>());
    }

    [Fact]
    public void LargeTensorsCopyInChunks()
    {
        using var dir = new TempDir();
        int n = 1000;
        var floats = Enumerable.Range(0, n).Select(i => (float)i).ToArray();
        var data = new byte[n * 4];
        Buffer.BlockCopy(floats, 0, data, 0, data.Length);
        string path = Raw.Save(dir, "big.safetensors", Raw.File($"{{\"x\":{{\"dtype\":\"F32\",\"shape\":[10,{n / 10}],\"data_offsets\":[0,{n * 4}]}}}}", data));
        using var file = SafetensorsFile.Open(path);
        using var t = file.Load(file.Info("x"), null, null, chunkBytes: 36); // 9 floats per chunk, last chunk partial
        Assert.Equal(floats, t.data<float>().ToArray());
    }

    [Fact]
    public void ManyMegabyteTensorsLoadAtMemoryFillSpeed()
    {
        using var dir = new TempDir();
        using var scope = torch.NewDisposeScope();
        var big = torch.arange(8L << 20, ScalarType.Int32).view(2048, 4096); // 32 MiB
        string path = dir.File("big.safetensors");
        SafetensorsWriter.Write(path, [("big", big)]);
        using var file = SafetensorsFile.Open(path);
        file.Load("big").Dispose(); // first touch of the mapping

        // Baseline: filling a fresh tensor of the same size (page faults dominate on some machines).
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using (var fresh = torch.empty(big.shape, ScalarType.Int32))
        {
            fresh.bytes.Fill(1);
        }
        var baseline = clock.Elapsed;
        clock.Restart();
        var loaded = file.Load("big");
        var elapsed = clock.Elapsed;
        TestContext.Current.TestOutputHelper?.WriteLine($"32 MiB loaded in {elapsed.TotalMilliseconds:F1} ms; filling a fresh tensor took {baseline.TotalMilliseconds:F1} ms");
        Assert.True(big.Equals(loaded));
        Assert.True(elapsed < baseline * 4 + TimeSpan.FromMilliseconds(100), $"32 MiB took {elapsed}, a plain fill {baseline}");
    }

    [Fact]
    public void UnsupportedDtypeOpensButRefusesToLoad()
    {
        using var dir = new TempDir();
        string path = Raw.Save(dir, "u32.safetensors", Raw.File("{\"u\":{\"dtype\":\"U32\",\"shape\":[2],\"data_offsets\":[0,8]}}", new byte[8]));
        using var file = SafetensorsFile.Open(path);
        Assert.Equal(SafetensorsDtype.U32, file.Info("u").Dtype);
        var ex = Assert.Throws<CheckpointException>(() => file.Load("u").Dispose());
        Assert.Contains(path, ex.Message);
        Assert.Contains("'u'", ex.Message);
        Assert.Contains("U32", ex.Message);
    }

    [Fact]
    public void MissingTensorIsACheckpointException()
    {
        using var dir = new TempDir();
        string path = Raw.Save(dir, "ok.safetensors", Raw.File(ValidHeader, ValidData()));
        using var file = SafetensorsFile.Open(path);
        var ex = Assert.Throws<CheckpointException>(() => file.Load("nope"));
        Assert.Contains(path, ex.Message);
        Assert.Contains("'nope'", ex.Message);
    }

    [Fact]
    public void LoadAfterDisposeThrowsObjectDisposed()
    {
        using var dir = new TempDir();
        string path = Raw.Save(dir, "ok.safetensors", Raw.File(ValidHeader, ValidData()));
        var file = SafetensorsFile.Open(path);
        file.Dispose();
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.Load("a"));
    }

    // ---- bad input: every rejection is a CheckpointException naming the file and the problem ----

    [Fact]
    public void MissingFile()
    {
        using var dir = new TempDir();
        Raw.AssertRejected(dir.File("absent.safetensors"), "cannot open");
    }

    [Fact]
    public void FileShorterThanTheLengthField()
    {
        using var dir = new TempDir();
        Raw.AssertRejected(Raw.Save(dir, "tiny.safetensors", [1, 2, 3]), "3 bytes", "too short");
        Raw.AssertRejected(Raw.Save(dir, "zero.safetensors", []), "0 bytes");
    }

    [Fact]
    public void HeaderLengthPastEndOfFile()
    {
        using var dir = new TempDir();
        string path = Raw.Save(dir, "h.safetensors", Raw.File(ValidHeader, ValidData(), lengthOverride: 5000));
        Raw.AssertRejected(path, "header length", "5000", "past the end of the file");
    }

    [Fact]
    public void HeaderLengthOver100MB()
    {
        using var dir = new TempDir();
        string path = Raw.Save(dir, "h.safetensors", Raw.File(ValidHeader, ValidData(), lengthOverride: 100_000_001));
        Raw.AssertRejected(path, "header length", "100000001", "limit");
        path = Raw.Save(dir, "h2.safetensors", Raw.File(ValidHeader, ValidData(), lengthOverride: ulong.MaxValue));
        Raw.AssertRejected(path, "header length", ulong.MaxValue.ToString());
    }

    [Fact]
    public void TruncatedData()
    {
        using var dir = new TempDir();
        byte[] full = Raw.File(ValidHeader, ValidData());
        string path = Raw.Save(dir, "t.safetensors", full[..^3]);
        Raw.AssertRejected(path, "tensor 'c'", "data_offsets [24, 28]", "past the end of the data buffer", "truncated");
    }

    [Fact]
    public void TrailingBytesAfterTheLastTensor()
    {
        using var dir = new TempDir();
        string path = Raw.Save(dir, "t.safetensors", Raw.File(ValidHeader, [.. ValidData(), 0, 0, 0, 0]));
        Raw.AssertRejected(path, "4 trailing bytes");
    }

    [Fact]
    public void OverlappingOffsets()
    {
        using var dir = new TempDir();
        string header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}";
        Raw.AssertRejected(Raw.Save(dir, "o.safetensors", Raw.File(header, new byte[24])), "tensor 'b'", "[8, 24]", "overlap", "'a'");
    }

    [Fact]
    public void GapBetweenTensors()
    {
        using var dir = new TempDir();
        string header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}";
        Raw.AssertRejected(Raw.Save(dir, "g.safetensors", Raw.File(header, new byte[24])), "bytes [8, 16)", "'b'", "no tensor");
    }

    [Fact]
    public void OutOfRangeOffsets()
    {
        using var dir = new TempDir();
        string header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
        Raw.AssertRejected(Raw.Save(dir, "r.safetensors", Raw.File(header, new byte[8])), "tensor 'a'", "[0, 16]", "past the end", "8 bytes");
        string huge = "{\"a\":{\"dtype\":\"U8\",\"shape\":[18446744073709551615],\"data_offsets\":[0,18446744073709551615]}}";
        Raw.AssertRejected(Raw.Save(dir, "r2.safetensors", Raw.File(huge, new byte[8])), "tensor 'a'", "too large");
    }

    [Fact]
    public void BeginAfterEnd()
    {
        using var dir = new TempDir();
        string header = "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,0]}}";
        Raw.AssertRejected(Raw.Save(dir, "b.safetensors", Raw.File(header, new byte[8])), "tensor 'a'", "[8, 0]", "begin after they end");
    }

    [Fact]
    public void UnknownDtype()
    {
        using var dir = new TempDir();
        string header = "{\"a\":{\"dtype\":\"F33\",\"shape\":[4],\"data_offsets\":[0,16]}}";
        Raw.AssertRejected(Raw.Save(dir, "d.safetensors", Raw.File(header, new byte[16])), "tensor 'a'", "unknown dtype 'F33'");
        header = "{\"a\":{\"dtype\":\"f32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
        Raw.AssertRejected(Raw.Save(dir, "d2.safetensors", Raw.File(header, new byte[16])), "unknown dtype 'f32'");
        header = "{\"a\":{\"dtype\":9,\"shape\":[4],\"data_offsets\":[0,16]}}";
        Raw.AssertRejected(Raw.Save(dir, "d3.safetensors", Raw.File(header, new byte[16])), "dtype must be a string");
    }

    [Fact]
    public void ShapeAndByteCountMismatch()
    {
        using var dir = new TempDir();
        string header = "{\"x\":{\"dtype\":\"F32\",\"shape\":[4,4],\"data_offsets\":[0,60]}}";
        Raw.AssertRejected(Raw.Save(dir, "m.safetensors", Raw.File(header, new byte[60])),
            "tensor 'x'", "data_offsets [0, 60] hold 60 bytes", "shape [4, 4] of F32 needs 64 bytes");
    }

    [Theory]
    [InlineData("[-1]", "holds the number -1")]
    [InlineData("[2.0]", "holds the number 2.0")]
    [InlineData("[1e1]", "holds the number 1e1")]
    [InlineData("[\"2\"]", "holds the string")]
    [InlineData("[99999999999999999999999]", "fits 64 bits")]
    [InlineData("4", "must be an array")]
    [InlineData("[9223372036854775808]", "dimension too large")]
    [InlineData("[4294967296,4294967296]", "overflows")]
    public void BadShapes(string shape, string fragment)
    {
        using var dir = new TempDir();
        string header = $"{{\"x\":{{\"dtype\":\"U8\",\"shape\":{shape},\"data_offsets\":[0,2]}}}}";
        Raw.AssertRejected(Raw.Save(dir, "s.safetensors", Raw.File(header, new byte[2])), "tensor 'x'", fragment);
    }

    [Fact]
    public void TooManyDimensions()
    {
        using var dir = new TempDir();
        string shape = "[" + string.Join(",", Enumerable.Repeat("1", 65)) + "]";
        string header = $"{{\"x\":{{\"dtype\":\"U8\",\"shape\":{shape},\"data_offsets\":[0,1]}}}}";
        Raw.AssertRejected(Raw.Save(dir, "s.safetensors", Raw.File(header, new byte[1])), "tensor 'x'", "more than 64 dimensions");
    }

    [Theory]
    [InlineData("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", "not valid JSON")]
    [InlineData("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],}}", "not valid JSON")]
    [InlineData("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}} x", "not valid JSON")]
    [InlineData("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}{}", "not valid JSON")]
    [InlineData("{/*c*/\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "not valid JSON")]
    [InlineData("", "empty")]
    [InlineData("   ", "empty")]
    public void MalformedJson(string header, string fragment)
    {
        using var dir = new TempDir();
        Raw.AssertRejected(Raw.Save(dir, "j.safetensors", Raw.File(header, new byte[1])), "header", fragment);
    }

    [Theory]
    [InlineData("[]", "not a JSON object")]
    [InlineData("\"x\"", "not a JSON object")]
    [InlineData("null", "not a JSON object")]
    [InlineData("42", "not a JSON object")]
    public void NonObjectJson(string header, string fragment)
    {
        using var dir = new TempDir();
        Raw.AssertRejected(Raw.Save(dir, "j.safetensors", Raw.File(header)), fragment);
    }

    [Fact]
    public void InvalidUtf8()
    {
        using var dir = new TempDir();
        byte[] bytes = Raw.File("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", new byte[1]);
        bytes[10] = 0xFF; // inside the name "x"
        Raw.AssertRejected(Raw.Save(dir, "u.safetensors", bytes), "not valid UTF-8", "offset 2");
    }

    [Fact]
    public void DuplicateNames()
    {
        using var dir = new TempDir();
        string header = "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}";
        Raw.AssertRejected(Raw.Save(dir, "dup.safetensors", Raw.File(header, new byte[2])), "tensor 'x' appears twice");
    }

    [Theory]
    [InlineData("{\"x\":{\"dtype\":\"U8\",\"shape\":[1]}}", "tensor 'x' has no data_offsets")]
    [InlineData("{\"x\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", "tensor 'x' has no shape")]
    [InlineData("{\"x\":{\"shape\":[1],\"data_offsets\":[0,1]}}", "tensor 'x' has no dtype")]
    [InlineData("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":1}}", "unknown field 'extra'")]
    [InlineData("{\"x\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "two dtype fields")]
    [InlineData("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", "must be [begin, end]")]
    [InlineData("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", "must be [begin, end]")]
    [InlineData("{\"x\":[1]}", "tensor 'x': expected an object")]
    [InlineData("{\"__metadata__\":{\"k\":1},\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "__metadata__ entry 'k' must be a string")]
    [InlineData("{\"__metadata__\":[],\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "__metadata__ must be an object")]
    [InlineData("{\"__metadata__\":{},\"__metadata__\":{},\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "two __metadata__")]
    public void BadEntries(string header, string fragment)
    {
        using var dir = new TempDir();
        Raw.AssertRejected(Raw.Save(dir, "e.safetensors", Raw.File(header, new byte[1])), fragment);
    }

    [Fact]
    public void DeeplyNestedJsonIsRejectedNotAStackOverflow()
    {
        using var dir = new TempDir();
        string header = "{\"__metadata__\":" + new string('[', 100_000) + new string(']', 100_000) + "}";
        Raw.AssertRejected(Raw.Save(dir, "n.safetensors", Raw.File(header)), "__metadata__");
        header = "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"y\":" + new string('[', 100_000) + "}}";
        Raw.AssertRejected(Raw.Save(dir, "n2.safetensors", Raw.File(header, new byte[1])), "tensor 'x'");
    }

    [Fact]
    public void DtypeHelpers()
    {
        Assert.Equal(15, SafetensorsDtypes.All.Count);
        Assert.Equal(10, SafetensorsDtypes.Loadable.Count);
        foreach (var d in SafetensorsDtypes.All)
        {
            Assert.True(SafetensorsDtypes.TryParse(d.ToString(), out var back));
            Assert.Equal(d, back);
            if (d.TryGetScalarType(out var st))
            {
                Assert.Equal(d, SafetensorsDtypes.FromScalarType(st));
                using var t = torch.empty(1, st);
                Assert.Equal(d.ElementSize(), t.ElementSize);
            }
        }
        Assert.False(SafetensorsDtypes.TryParse("1", out _));
        Assert.False(SafetensorsDtypes.TryParse("bf16", out _));
        Assert.Throws<ArgumentException>(() => SafetensorsDtypes.FromScalarType(ScalarType.ComplexFloat32));
    }
}
