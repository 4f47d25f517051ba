using Tern.Interop;

namespace Tern.Tests.Runtime;

/// <summary>The CPU kernels' scratch buffers: aligned to a cache line, at least as large as asked, never shared by two leases.</summary>
public unsafe class AlignedScratchTests
{
    [Theory]
    [InlineData(1L)]
    [InlineData(1000L)]
    [InlineData(1024L)]
    [InlineData(1025L)]
    [InlineData(3L << 20)]
    public void BuffersAreAlignedLargeEnoughAndNotShared(long count)
    {
        for (int round = 0; round < 2; round++) // the second round takes the blocks the first returned
        {
            using var a = AlignedScratch.Rent(count);
            using var b = AlignedScratch.Rent(count);
            Assert.NotEqual((nint)a.Pointer, (nint)b.Pointer);
            foreach (var lease in new[] { a, b })
            {
                Assert.Equal(0, (long)lease.Pointer % 64);
                lease.Pointer[0] = 1f;
                lease.Pointer[count - 1] = 2f; // the last float asked for lies inside the block
            }
            Assert.Equal(2f, a.Pointer[count - 1]);
            Assert.Equal(2f, b.Pointer[count - 1]);
            Assert.Equal(count == 1 ? 2f : 1f, a.Pointer[0]);
        }
    }
}
