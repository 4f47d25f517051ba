using Tern.Compression;
using Tern.Caching;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Caching;

/// <summary>The group-quantized cache storage: what is read back is within the quantizer's bound of what was stored, kept
/// entries stay bit-identical through eviction, and 16 bits store the model's dtype untouched.</summary>
public sealed class QuantizedKvCacheTests
{
    const int B = 2, H = 3, T = 7;

    static KvCache Cache(int bits, int headDim) => KvCache.Create(new KvCacheOptions
    {
        BatchSize = B, Layers = 1, KvHeads = H, HeadDim = headDim, Capacity = 12, DType = ScalarType.Float32, Device = torch.CPU, Bits = bits,
    });

    static Tensor Positions(int start) => torch.arange(start, start + T, ScalarType.Int64).unsqueeze(0).expand(B, T).contiguous();

    /// <summary>Head dims below, at and above one group of 64: each element comes back within half a step of its group,
    /// the group's range taken with the zero padding FlexGen includes.</summary>
    [Theory]
    [InlineData(8, 8)]
    [InlineData(8, 4)]
    [InlineData(64, 4)]
    [InlineData(96, 8)]
    [InlineData(96, 4)]
    public void ReadsBackWithinHalfAStepOfEachGroup(int headDim, int bits)
    {
        using var cache = Cache(bits, headDim);
        using var scope = torch.NewDisposeScope();
        var keys = torch.randn(new long[] { B, H, T, headDim }, generator: new torch.Generator(3)) * 2.5 + 0.7;
        var values = torch.rand(new long[] { B, H, T, headDim }, generator: new torch.Generator(4)) * 9 - 3;
        var layer = cache[0];
        layer.Append(keys, values, Positions(0), hasPadding: false);
        foreach (var (stored, read) in new[] { (keys, layer.ActiveKeys), (values, layer.ActiveValues) })
        {
            Assert.Equal(stored.shape, read.shape);
            var s = HostArrays.Floats(stored);
            var r = HostArrays.Floats(read);
            for (int row = 0; row < B * H * T; row++)
                for (int g = 0; g * 64 < headDim; g++)
                {
                    int from = row * headDim + g * 64, n = Math.Min(64, headDim - g * 64);
                    var group = s.AsSpan(from, n).ToArray().Concat(n < 64 ? new[] { 0f } : Array.Empty<float>()).ToArray();
                    double half = (group.Max() - group.Min()) / ((1 << bits) - 1) / 2 * (1 + 1e-5);
                    for (int i = from; i < from + n; i++)
                        Assert.True(Math.Abs(s[i] - r[i]) <= half + 1e-6, $"element {i}: stored {s[i]}, read {r[i]}, bound {half}");
                }
            Assert.True(HostArrays.MaxAbsDiff(s, r) > 0, "quantization changed nothing: the test would prove nothing");
        }
        // Per slot and group of 64 (zero-padded): 64 codes of `bits` bits and an fp32 (step, min) pair; keys and values.
        long groups = (headDim + 63) / 64;
        Assert.Equal(2L * B * H * 12 * groups * (64 * bits / 8 + 2 * 4), cache.Bytes);
    }

    [Theory]
    [InlineData(8)]
    [InlineData(4)]
    public void KeptEntriesReadBackBitIdenticalAfterEviction(int bits)
    {
        using var cache = Cache(bits, 8);
        using var scope = torch.NewDisposeScope();
        var layer = cache[0];
        layer.Append(torch.randn(B, H, T, 8), torch.randn(B, H, T, 8), Positions(0), hasPadding: false);
        var before = HostLayer.Read(layer);
        var keep = torch.tensor(Enumerable.Range(0, B * H * T).Select(i => i % T % 3 != 1).ToArray(), new long[] { B, H, T });
        layer.Keep(keep);
        var after = HostLayer.Read(layer);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
            {
                var slots = before.SlotsByPosition(b, h);
                var kept = after.SlotsByPosition(b, h);
                Assert.Equal(Enumerable.Range(0, T).Where(p => p % 3 != 1).Select(p => (long)p), kept.Keys.Order());
                foreach (var (position, slot) in kept)
                {
                    Assert.True(HostArrays.BitEqual(before.Key(b, h, slots[position]), after.Key(b, h, slot)), $"({b},{h}) key of position {position}");
                    Assert.True(HostArrays.BitEqual(before.Value(b, h, slots[position]), after.Value(b, h, slot)), $"({b},{h}) value of position {position}");
                }
            }
    }

    [Fact]
    public void SixteenBitsStoreTheModelDtypeUntouched()
    {
        using var cache = Cache(16, 8);
        using var scope = torch.NewDisposeScope();
        var keys = torch.randn(B, H, T, 8);
        cache[0].Append(keys, keys * 3, Positions(0), hasPadding: false);
        Assert.True(HostArrays.BitEqual(keys, cache[0].ActiveKeys));
        Assert.True(HostArrays.BitEqual(keys * 3, cache[0].ActiveValues));
        Assert.Equal((long)B * H * 12 * 8 * 4 * 2, cache.Bytes);
        Assert.Equal(KvCacheConfig.Full, KvCachePolicies.Create(new KvPolicyOptions { Bits = 16 }));
    }

    [Fact]
    public void StaticShapeAppendNeedsSixteenBits()
    {
        using var cache = Cache(8, 8);
        using var scope = torch.NewDisposeScope();
        var e = Assert.Throws<InvalidOperationException>(() =>
            cache[0].Append(torch.randn(B, H, 1, 8), torch.randn(B, H, 1, 8), Positions(0).narrow(1, 0, 1), false, torch.tensor(new long[] { 0 })));
        Assert.Contains("16-bit", e.Message);
    }

    [Fact]
    public void RejectsOtherBitWidths()
    {
        var e = Assert.Throws<OptionException>(() => Cache(3, 8));
        Assert.Equal("KvPolicyOptions.Bits must be 16, 8 or 4 (got 3).", e.Message);
        Assert.Equal(64, QuantizedKvStore.GroupSize);
    }
}
