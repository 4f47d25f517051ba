namespace Tern.Labs;

/// <summary>
/// CPython's <c>random</c> module generator (MT19937 seeded through <c>init_by_array</c>), as far as the reference recipes use
/// it: <c>random.seed(n)</c> and <c>random.choice</c>. The official Scan &amp; Snap run picks each sample's sequence class with
/// it, so reproducing that run's log needs the same draws.
/// </summary>
public sealed class PythonRandom
{
    const int N = 624, M = 397;
    readonly uint[] mt = new uint[N];
    int index;

    /// <summary>The generator after <c>random.seed(<paramref name="seed"/>)</c> (a non-negative integer seed: Python hashes
    /// others differently).</summary>
    public PythonRandom(long seed)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(seed);
        // Python keys the generator with the seed's 32-bit words, least significant first (one word for 0).
        var key = new List<uint>();
        for (ulong n = (ulong)seed; key.Count == 0 || n > 0; n >>= 32) key.Add((uint)n);
        InitByArray(key);
    }

    void InitGenrand(uint s)
    {
        mt[0] = s;
        for (int i = 1; i < N; i++) mt[i] = 1812433253u * (mt[i - 1] ^ (mt[i - 1] >> 30)) + (uint)i;
        index = N;
    }

    void InitByArray(IReadOnlyList<uint> key)
    {
        InitGenrand(19650218u);
        int i = 1, j = 0;
        for (int k = Math.Max(N, key.Count); k > 0; k--)
        {
            mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + key[j] + (uint)j;
            if (++i >= N) { mt[0] = mt[N - 1]; i = 1; }
            if (++j >= key.Count) j = 0;
        }
        for (int k = N - 1; k > 0; k--)
        {
            mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - (uint)i;
            if (++i >= N) { mt[0] = mt[N - 1]; i = 1; }
        }
        mt[0] = 0x80000000u; // non-zero initial state
    }

    /// <summary>The next 32 bits (<c>genrand_uint32</c>).</summary>
    public uint NextUInt32()
    {
        if (index >= N)
        {
            for (int k = 0; k < N; k++)
            {
                uint y = (mt[k] & 0x80000000u) | (mt[(k + 1) % N] & 0x7fffffffu);
                mt[k] = mt[(k + M) % N] ^ (y >> 1) ^ ((y & 1) != 0 ? 0x9908b0dfu : 0u);
            }
            index = 0;
        }
        uint x = mt[index++];
        x ^= x >> 11;
        x ^= (x << 7) & 0x9d2c5680u;
        x ^= (x << 15) & 0xefc60000u;
        return x ^ (x >> 18);
    }

    /// <summary>A uniform integer in [0, <paramref name="n"/>) as <c>random._randbelow</c> draws it (1 ≤ n ≤ 2³¹): the top
    /// bit_length(n) bits of a word, redrawn until below n. <c>random.choice(seq)</c> is <c>seq[Below(len(seq))]</c>.</summary>
    public int Below(int n)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(n, 1);
        int bits = 32 - System.Numerics.BitOperations.LeadingZeroCount((uint)n);
        uint r;
        do r = NextUInt32() >> (32 - bits); while (r >= (uint)n);
        return (int)r;
    }
}
