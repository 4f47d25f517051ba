using Tern.Caching;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Caching;

/// <summary>The row operations serving builds on (active rows, import, move, empty, compaction, resizing), on 16-bit and
/// 8-bit storage: entries read back bit-identical where they land, freed rows hold nothing.</summary>
public sealed class CacheRowTests
{
    const int B = 3, H = 2, D = 5, C = 12;

    static KvCache Create(int bits, int batch = B, int capacity = C) => KvCache.Create(new KvCacheOptions
    {
        BatchSize = batch, Layers = 2, KvHeads = H, HeadDim = D, Capacity = capacity, DType = ScalarType.Float32, Device = torch.CPU, Bits = bits,
    });

    /// <summary>Appends <paramref name="tokens"/> entries per row to every layer, row b at positions from <paramref name="start"/>[b].</summary>
    static void Fill(KvCache cache, int tokens, int seed, params long[] start)
    {
        int rows = cache.ActiveRows;
        var positions = torch.tensor(Enumerable.Range(0, rows).SelectMany(b => Enumerable.Range(0, tokens).Select(t => start[b] + t)).ToArray(), new long[] { rows, tokens });
        for (int l = 0; l < cache.LayerCount; l++)
        {
            var gen = new torch.Generator((ulong)(seed + l));
            cache[l].Append(torch.randn(new long[] { rows, H, tokens, D }, generator: gen), torch.randn(new long[] { rows, H, tokens, D }, generator: gen), positions, hasPadding: false);
        }
    }

    static Tensor Row(Tensor t, int row, int start, int count) => t.select(0, row).narrow(1, start, count);

    /// <summary>A one-row cache (a soft prompt's entries) fills a block of rows in one copy, exactly, and leaves no holes when
    /// it fills every row in use (decode keeps its unmasked path).</summary>
    [Theory]
    [InlineData(16)]
    [InlineData(8)]
    public void AOneRowCacheFillsEveryRowOfABlock(int bits)
    {
        using var scope = torch.NewDisposeScope();
        using var prefix = Create(bits, batch: 1, capacity: 4);
        Fill(prefix, 4, seed: 3, 0);
        using var cache = Create(bits);
        cache.ImportIntoRows(0, B, prefix);
        Assert.Equal(4, cache.Length);
        for (int l = 0; l < 2; l++)
        {
            Assert.False(cache[l].HasHoles);
            for (int row = 0; row < B; row++)
            {
                Assert.True(Row(cache[l].Keys, row, 0, 4).eq(Row(prefix[l].Keys, 0, 0, 4)).all().item<bool>());
                Assert.True(Row(cache[l].Values, row, 0, 4).eq(Row(prefix[l].Values, 0, 0, 4)).all().item<bool>());
                Assert.Equal(new long[] { 0, 1, 2, 3 }, Row(cache[l].Positions, row, 0, 4).select(0, 0).data<long>().ToArray());
            }
        }
        Assert.Equal(B * 2 * H * 4, cache.OccupiedEntries());
    }

    [Theory]
    [InlineData(16)]
    [InlineData(8)]
    public void ImportMoveEmptyCompactAndResizeKeepEntriesExact(int bits)
    {
        using var scope = torch.NewDisposeScope();
        using var cache = Create(bits);
        cache.ActiveRows = 2;
        Fill(cache, 6, seed: 1, 0, 10);
        Assert.Equal(new long[] { 2, H, 6, D }, cache[0].ActiveKeys.shape);
        Assert.True(cache[0].ActivePositions.ge(0).all().item<bool>());
        Assert.Equal(2 * H * 6 * 2, cache.OccupiedEntries()); // row 2 never written

        // A prefilled row of another cache (4 entries after 1 slot of padding) joins as row 2.
        using var scratch = Create(bits, batch: 1, capacity: 5);
        Fill(scratch, 5, seed: 7, -1);
        scratch[0].Positions.narrow(2, 0, 1).fill_(-1); scratch[1].Positions.narrow(2, 0, 1).fill_(-1);
        cache.ActiveRows = 3;
        cache.ImportRows(2, scratch, 0, 1, 1, 4);
        Assert.Equal(6, cache.Length);
        Assert.True(cache[0].HasHoles);
        for (int l = 0; l < 2; l++)
        {
            Assert.True(Row(cache[l].Keys, 2, 0, 4).eq(Row(scratch[l].Keys, 0, 1, 4)).all().item<bool>());
            Assert.True(Row(cache[l].Values, 2, 0, 4).eq(Row(scratch[l].Values, 0, 1, 4)).all().item<bool>());
            Assert.Equal(new long[] { 0, 1, 2, 3, -1, -1 }, Row(cache[l].Positions, 2, 0, 6).select(0, 0).data<long>().ToArray());
        }

        // Row 0 leaves: the last row moves into it; the moved-from row holds nothing.
        var movedKeys = Row(cache[1].Keys, 2, 0, 6).clone();
        cache.MoveRow(2, 0);
        cache.ActiveRows = 2;
        Assert.True(Row(cache[1].Keys, 0, 0, 4).eq(movedKeys.narrow(1, 0, 4)).all().item<bool>());
        Assert.Equal(H * (6 + 4) * 2, cache.OccupiedEntries()); // rows of 4 and 6 entries, 2 layers

        // Compaction: the shorter row's entries stay in front; the length is the longest row's.
        Fill(cache, 1, seed: 3, 4, 16);
        cache.Compact();
        Assert.Equal(7, cache.Length);
        Assert.Equal(new long[] { 0, 1, 2, 3, 4, -1, -1 }, cache[0].Positions.select(0, 0).select(0, 0).narrow(0, 0, 7).data<long>().ToArray());
        Assert.Equal(new long[] { 10, 11, 12, 13, 14, 15, 16 }, cache[0].Positions.select(0, 1).select(0, 1).narrow(0, 0, 7).data<long>().ToArray());

        // Resizing keeps rows in use, slots, entries and holes.
        using var resized = cache.Resized(4, 16);
        Assert.Equal((2, 7, 4, 16), (resized.ActiveRows, resized.Length, resized.Options.BatchSize, resized.Options.Capacity));
        for (int l = 0; l < 2; l++)
        {
            Assert.True(resized[l].ActiveKeys.eq(cache[l].ActiveKeys).all().item<bool>());
            Assert.True(resized[l].ActivePositions.eq(cache[l].ActivePositions).all().item<bool>());
        }
        Assert.Equal(cache.OccupiedEntries(), resized.OccupiedEntries());

        cache.EmptyRows(1, 1);
        Assert.Equal(2 * H * 5, cache.OccupiedEntries());
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.ActiveRows = 4);
    }

    [Theory]
    [InlineData(16)]
    [InlineData(8)]
    public void ABlockOfRowsImportsAsEachRowAlone(int bits)
    {
        using var scope = torch.NewDisposeScope();
        using var scratch = Create(bits, batch: 2, capacity: 5);
        scratch.ActiveRows = 2;
        Fill(scratch, 5, seed: 7, -1, 9);
        using var block = Create(bits);
        using var single = Create(bits);
        block.ActiveRows = single.ActiveRows = 3;
        block.ImportRows(1, scratch, 0, 2, 1, 4);
        for (int r = 0; r < 2; r++) single.ImportRows(1 + r, scratch, r, 1, 1, 4);
        Assert.Equal((4, true), (block.Length, block[0].HasHoles));
        for (int l = 0; l < 2; l++)
        {
            Assert.True(block[l].Keys.eq(single[l].Keys).all().item<bool>());
            Assert.True(block[l].Values.eq(single[l].Values).all().item<bool>());
            Assert.True(block[l].Positions.eq(single[l].Positions).all().item<bool>());
        }
        Assert.Equal(2 * H * 4 * 2, block.OccupiedEntries());
    }
}
