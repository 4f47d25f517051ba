using Tern.Caching;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Caching;

/// <summary>
/// <see cref="LayerKvCache"/> on odd sizes (batch 3, 2 KV heads, head dim 5, 11 slots), checked against host-side
/// expectations computed entry by entry.
/// </summary>
public sealed class LayerKvCacheTests : IDisposable
{
    const int B = 3, H = 2, D = 5, C = 11;
    readonly KvCache cache = KvCache.Create(new KvCacheOptions
    {
        BatchSize = B, Layers = 2, KvHeads = H, HeadDim = D, Capacity = C, DType = ScalarType.Float32, Device = torch.CPU,
    });

    LayerKvCache Layer => cache[1];

    public void Dispose() => cache.Dispose();

    /// <summary>Distinct, non-round values [B, H, T, D], different per call.</summary>
    static Tensor Entries(int tokens, int seed)
    {
        var gen = new torch.Generator((ulong)seed);
        return torch.randn(new long[] { B, H, tokens, D }, generator: gen) * 3.7f + seed;
    }

    static Tensor Pos(long[,] positions) =>
        torch.tensor(positions.Cast<long>().ToArray(), new long[] { positions.GetLength(0), positions.GetLength(1) });

    /// <summary>Host mirror of a layer: per (b, h) the list of (position, key, value) in slot order.</summary>
    sealed class Mirror
    {
        public readonly List<(long Pos, float[] K, float[] V)>[,] Rows = new List<(long, float[], float[])>[B, H];

        public Mirror()
        {
            for (int b = 0; b < B; b++)
                for (int h = 0; h < H; h++) Rows[b, h] = new();
        }

        public void Append(Tensor keys, Tensor values, long[,] positions)
        {
            var k = HostArrays.Floats(keys);
            var v = HostArrays.Floats(values);
            int t = positions.GetLength(1);
            for (int b = 0; b < B; b++)
                for (int h = 0; h < H; h++)
                    for (int i = 0; i < t; i++)
                    {
                        int at = ((b * H + h) * t + i) * D;
                        Rows[b, h].Add((positions[b, i], k.AsSpan(at, D).ToArray(), v.AsSpan(at, D).ToArray()));
                    }
        }

        /// <summary>Keeps the occupied entries whose flag is set, in order; returns the longest row.</summary>
        public int Keep(bool[,,] keep)
        {
            int longest = 0;
            for (int b = 0; b < B; b++)
                for (int h = 0; h < H; h++)
                {
                    var row = Rows[b, h];
                    Rows[b, h] = row.Where((e, i) => keep[b, h, i] && e.Pos >= 0).ToList();
                    longest = Math.Max(longest, Rows[b, h].Count);
                }
            return longest;
        }

        /// <summary>The layer holds exactly this: row r's entries in slots [0, n_r), then -1 up to the capacity.</summary>
        public void AssertMatches(LayerKvCache layer, string what)
        {
            var host = HostLayer.Read(layer);
            for (int b = 0; b < B; b++)
                for (int h = 0; h < H; h++)
                {
                    var row = Rows[b, h];
                    for (int s = 0; s < C; s++)
                    {
                        if (s < row.Count)
                        {
                            Assert.True(row[s].Pos == host.Position(b, h, s), $"{what}: ({b},{h}) slot {s}: position {host.Position(b, h, s)}, expected {row[s].Pos}");
                            if (row[s].Pos < 0) continue;
                            Assert.True(HostArrays.BitEqual(row[s].K, host.Key(b, h, s)), $"{what}: ({b},{h}) slot {s}: key bytes differ");
                            Assert.True(HostArrays.BitEqual(row[s].V, host.Value(b, h, s)), $"{what}: ({b},{h}) slot {s}: value bytes differ");
                        }
                        else
                            Assert.True(host.Position(b, h, s) == -1, $"{what}: ({b},{h}) slot {s} past the row's {row.Count} entries holds position {host.Position(b, h, s)}");
                    }
                }
        }
    }

    [Fact]
    public void StartsEmpty()
    {
        var layer = Layer;
        Assert.Equal(1, layer.Layer);
        Assert.Equal(C, layer.Capacity);
        Assert.Equal(0, layer.Length);
        Assert.False(layer.HasHoles);
        Assert.Equal(new long[] { B, H, C, D }, layer.Keys.shape);
        Assert.Equal(new long[] { B, H, C }, layer.Positions.shape);
        Assert.True(layer.Positions.eq(-1).all().item<bool>());
        Assert.Equal(new long[] { B, H, 0, D }, layer.ActiveKeys.shape);
        Assert.Equal(new long[] { B, H }, layer.EntryCounts().shape);
        Assert.True(layer.EntryCounts().eq(0).all().item<bool>());
    }

    [Fact]
    public void AppendWritesAtLengthBitIdenticallyAndBroadcastsPositionsOverHeads()
    {
        var layer = Layer;
        var mirror = new Mirror();
        var p1 = new long[,] { { 0, 1, 2, 3 }, { 0, 1, 2, 3 }, { 0, 1, 2, 3 } };
        var k1 = Entries(4, 1);
        var v1 = Entries(4, 2);
        layer.Append(k1, v1, Pos(p1), hasPadding: false);
        mirror.Append(k1, v1, p1);
        Assert.Equal(4, layer.Length);
        Assert.False(layer.HasHoles);
        mirror.AssertMatches(layer, "after the first append");
        Assert.True(HostArrays.BitEqual(layer.ActiveKeys, k1));
        Assert.True(HostArrays.BitEqual(layer.ActiveValues, v1));

        var p2 = new long[,] { { 4, 5, 6 }, { 4, 5, 6 }, { 4, 5, 6 } };
        var k2 = Entries(3, 3);
        var v2 = Entries(3, 4);
        layer.Append(k2, v2, Pos(p2), hasPadding: false);
        mirror.Append(k2, v2, p2);
        Assert.Equal(7, layer.Length);
        mirror.AssertMatches(layer, "after the second append");
        Assert.True(HostArrays.BitEqual(layer.ActiveKeys.narrow(2, 4, 3), k2));
        Assert.True(HostArrays.BitEqual(layer.Keys.narrow(2, 0, 4), k1), "the second append overwrote the first");
        // Slots past Length were never written.
        Assert.True(layer.Keys.narrow(2, 7, C - 7).eq(0).all().item<bool>());
        Assert.True(layer.EntryCounts().eq(7).all().item<bool>());
        Assert.Equal(new long[] { B, H, 7 }, layer.ActivePositions.shape);
    }

    [Fact]
    public void PaddingMarksHolesAndStaysEmpty()
    {
        var layer = Layer;
        var mirror = new Mirror();
        var p = new long[,] { { -1, -1, 0, 1 }, { 0, 1, 2, 3 }, { -1, 0, 1, 2 } };
        var k = Entries(4, 5);
        layer.Append(k, k + 1, Pos(p), hasPadding: true);
        mirror.Append(k, k + 1, p);
        Assert.True(layer.HasHoles);
        mirror.AssertMatches(layer, "padded append");
        Assert.Equal(new long[] { 2, 2, 4, 4, 3, 3 }, HostArrays.Longs(layer.EntryCounts()));

        // A later append without padding leaves HasHoles set: the holes are still there.
        var p2 = new long[,] { { 2 }, { 4 }, { 3 } };
        layer.Append(Entries(1, 6), Entries(1, 7), Pos(p2), hasPadding: false);
        Assert.True(layer.HasHoles);
        Assert.Equal(5, layer.Length);
    }

    [Fact]
    public void AppendPastTheCapacityThrowsAndChangesNothing()
    {
        var layer = Layer;
        var mirror = new Mirror();
        var p = new long[B, 9];
        for (int b = 0; b < B; b++)
            for (int i = 0; i < 9; i++) p[b, i] = i;
        var k = Entries(9, 8);
        layer.Append(k, k, Pos(p), false);
        mirror.Append(k, k, p);
        var p2 = new long[B, 3];
        for (int b = 0; b < B; b++)
            for (int i = 0; i < 3; i++) p2[b, i] = 9 + i;
        var ex = Assert.Throws<InvalidOperationException>(() => layer.Append(Entries(3, 9), Entries(3, 9), Pos(p2), false));
        Assert.Contains("layer 1", ex.Message);
        Assert.Contains("11", ex.Message);
        Assert.Equal(9, layer.Length);
        mirror.AssertMatches(layer, "after the refused append");
        // Exactly full is fine.
        var p3 = new long[B, 2];
        for (int b = 0; b < B; b++)
            for (int i = 0; i < 2; i++) p3[b, i] = 9 + i;
        layer.Append(Entries(2, 10), Entries(2, 10), Pos(p3), false);
        Assert.Equal(C, layer.Length);
    }

    /// <summary>Fills the layer with 8 entries per row (sequence 0 has 2 padding slots), and its mirror.</summary>
    Mirror Filled()
    {
        var mirror = new Mirror();
        var p = new long[B, 8];
        for (int b = 0; b < B; b++)
            for (int i = 0; i < 8; i++) p[b, i] = b == 0 ? i - 2 : i;
        p[0, 0] = p[0, 1] = -1;
        var k = Entries(8, 11);
        var v = Entries(8, 12);
        Layer.Append(k, v, Pos(p), hasPadding: true);
        mirror.Append(k, v, p);
        return mirror;
    }

    static bool[,,] Flags(int length, Func<int, int, int, bool> keep)
    {
        var flags = new bool[B, H, length];
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int s = 0; s < length; s++) flags[b, h, s] = keep(b, h, s);
        return flags;
    }

    static Tensor ToTensor(bool[,,] flags) =>
        torch.tensor(flags.Cast<bool>().ToArray(), new long[] { flags.GetLength(0), flags.GetLength(1), flags.GetLength(2) });

    [Fact]
    public void KeepWithDifferentMasksPerHeadCompactsSurvivorsInOrder()
    {
        var layer = Layer;
        var mirror = Filled();
        // Each (sequence, head) keeps a different subset, of different sizes; (0,1) asks to keep its padding too.
        var flags = Flags(8, (b, h, s) => (b, h) switch
        {
            (0, 0) => s is 3 or 7,
            (0, 1) => s is 0 or 1 or 2 or 5,
            (1, 0) => true,
            (1, 1) => s % 3 == 1,
            (2, 0) => s >= 5,
            _ => false,
        });
        layer.Keep(ToTensor(flags));
        int longest = mirror.Keep(flags);
        Assert.Equal(8, longest);
        Assert.Equal(longest, layer.Length);
        Assert.True(layer.HasHoles);
        mirror.AssertMatches(layer, "after Keep");
        Assert.Equal(new long[] { 2, 2, 8, 3, 3, 0 }, HostArrays.Longs(layer.EntryCounts()));

        // A second round on the compacted layer.
        var again = Flags(layer.Length, (b, h, s) => s != 0);
        layer.Keep(ToTensor(again));
        Assert.Equal(mirror.Keep(again), layer.Length);
        Assert.Equal(7, layer.Length);
        mirror.AssertMatches(layer, "after a second Keep");

        // Appending after eviction continues at Length.
        var p = new long[,] { { 6 }, { 8 }, { 8 } };
        var k = Entries(1, 13);
        layer.Append(k, k, Pos(p), false);
        Assert.Equal(8, layer.Length);
        Assert.True(HostArrays.BitEqual(layer.Keys.narrow(2, 7, 1), k));
        Assert.Equal(new long[] { 6, 8, 8 }, HostArrays.Longs(layer.Positions.narrow(2, 7, 1).select(1, 0).squeeze(-1)));
    }

    [Fact]
    public void KeepNeverKeepsEmptySlots()
    {
        var layer = Layer;
        var mirror = Filled();
        var flags = Flags(8, (_, _, _) => true);
        layer.Keep(ToTensor(flags));
        Assert.Equal(mirror.Keep(flags), layer.Length);
        Assert.Equal(8, layer.Length); // sequences 1 and 2 had no padding
        mirror.AssertMatches(layer, "keep-all over padding");
        Assert.Equal(new long[] { 6, 6, 8, 8, 8, 8 }, HostArrays.Longs(layer.EntryCounts()));
        // Sequence 0's padding is gone: its 6 entries are at the front, the last 2 slots empty.
        Assert.Equal(new long[] { 0, 1, 2, 3, 4, 5, -1, -1 }, HostArrays.Longs(layer.ActivePositions[0, 0]));
    }

    [Fact]
    public void KeepWithKeptPerRowSetsLengthWithoutReadingBack()
    {
        var layer = Layer;
        var mirror = new Mirror();
        var p = new long[B, 9];
        for (int b = 0; b < B; b++)
            for (int i = 0; i < 9; i++) p[b, i] = 10 * b + i;
        var k = Entries(9, 14);
        layer.Append(k, k * 2, Pos(p), false);
        mirror.Append(k, k * 2, p);
        Assert.False(layer.HasHoles);
        // Every row keeps 4 entries, at different slots per head.
        var flags = Flags(9, (b, h, s) => ((s + b + 2 * h) % 9) < 4);
        layer.Keep(ToTensor(flags), keptPerRow: 4);
        Assert.Equal(mirror.Keep(flags), layer.Length);
        Assert.Equal(4, layer.Length);
        Assert.False(layer.HasHoles, "an even eviction leaves no holes");
        mirror.AssertMatches(layer, "Keep with keptPerRow");
        Assert.True(layer.EntryCounts().eq(4).all().item<bool>());
    }

    [Fact]
    public void KeepingNothingEmptiesTheLayer()
    {
        var layer = Layer;
        Filled();
        layer.Keep(ToTensor(Flags(8, (_, _, _) => false)));
        Assert.Equal(0, layer.Length);
        Assert.True(layer.Positions.eq(-1).all().item<bool>());
        Assert.True(layer.EntryCounts().eq(0).all().item<bool>());
    }

    [Fact]
    public void KeepOnAnEmptyLayerDoesNothing()
    {
        var layer = Layer;
        using var keep = torch.ones(new long[] { B, H, 0 }, ScalarType.Bool);
        layer.Keep(keep);
        Assert.Equal(0, layer.Length);
        Assert.False(layer.HasHoles);
    }

    [Fact]
    public void ClearEmptiesAndKeepsTheAllocation()
    {
        var layer = Layer;
        Filled();
        var keysBefore = layer.Keys;
        layer.Clear();
        Assert.Equal(0, layer.Length);
        Assert.False(layer.HasHoles);
        Assert.True(layer.Positions.eq(-1).all().item<bool>());
        Assert.Same(keysBefore, layer.Keys);
        // Appends start again at slot 0.
        var mirror = new Mirror();
        var p = new long[,] { { 0, 1 }, { 0, 1 }, { 0, 1 } };
        var k = Entries(2, 15);
        layer.Append(k, k, Pos(p), false);
        mirror.Append(k, k, p);
        Assert.Equal(2, layer.Length);
        mirror.AssertMatches(layer, "append after Clear");
    }
}

public sealed class KvCacheTests
{
    static KvCacheOptions Options(int batch = 2, int layers = 3, int kvHeads = 2, int dim = 4, int capacity = 6) => new()
    {
        BatchSize = batch, Layers = layers, KvHeads = kvHeads, HeadDim = dim, Capacity = capacity, DType = ScalarType.Float32, Device = torch.CPU,
    };

    [Theory]
    [InlineData(0, 1, 1, 1, 1)]
    [InlineData(1, 0, 1, 1, 1)]
    [InlineData(1, 1, 0, 1, 1)]
    [InlineData(1, 1, 1, 0, 1)]
    [InlineData(1, 1, 1, 1, 0)]
    public void RejectsEmptyShapes(int batch, int layers, int kvHeads, int dim, int capacity)
    {
        Assert.Throws<ArgumentException>(() => KvCache.Create(Options(batch, layers, kvHeads, dim, capacity)));
    }

    [Fact]
    public void HoldsOneLayerCachePerLayerAndCountsTokens()
    {
        using var cache = KvCache.Create(Options());
        Assert.Equal(3, cache.LayerCount);
        Assert.Same(DensePolicy.Instance, cache.Policy);
        for (int l = 0; l < 3; l++) Assert.Equal(l, cache[l].Layer);
        Assert.Equal(2L * 3 * 2 * 2 * 6 * 4 * 4, cache.Bytes); // keys + values, fp32
        cache.Advance(new[] { 3, 1 });
        cache.Advance(new[] { 1, 1 });
        Assert.Equal(new[] { 4, 2 }, cache.SequenceLengths);
        using var kv = torch.ones(2, 2, 1, 4);
        using var pos = torch.tensor(new long[] { 0, 0 }, new long[] { 2, 1 });
        cache[2].Append(kv, kv, pos, false);
        cache.Clear();
        Assert.Equal(new[] { 0, 0 }, cache.SequenceLengths);
        Assert.Equal(0, cache[2].Length);
    }
}
