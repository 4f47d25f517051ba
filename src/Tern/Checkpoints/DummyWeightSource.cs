using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Checkpoints;

/// <summary>How <see cref="DummyWeightSource"/> fills weight matrices.</summary>
public enum DummyWeightKind
{
    /// <summary>Normal noise with standard deviation <see cref="DummyWeightOptions.Std"/>, reproducible per name and seed.</summary>
    Random,
    /// <summary>Every element <see cref="DummyWeightOptions.ConstantValue"/>.</summary>
    Constant,
}

/// <summary>Options for <see cref="DummyWeightSource.Create"/>.</summary>
public sealed record DummyWeightOptions
{
    /// <summary>Random (default) or constant weights.</summary>
    public DummyWeightKind Kind { get; init; } = DummyWeightKind.Random;

    /// <summary>Mixed with a stable hash of each tensor's name, so a given name, shape and seed always give the same
    /// tensor, on any device.</summary>
    public long Seed { get; init; }

    /// <summary>Standard deviation of random weights (default 0.02, the usual initializer range of HF configs).</summary>
    public double Std { get; init; } = 0.02;

    /// <summary>Value of every weight element in <see cref="DummyWeightKind.Constant"/> mode (default 0.01).</summary>
    public double ConstantValue { get; init; } = 0.01;
}

/// <summary>
/// Made-up weights, for throughput work without weight files (as FlexGen's dummy weights): each requested tensor is
/// generated directly on the requested device in the requested dtype, with the shape the model asks for. Norm
/// weights (names ending in <c>norm.weight</c>, <c>layernorm.weight</c>, <c>layer_norm.weight</c> or GPT-2's
/// <c>ln_*.weight</c>) are ones and biases zeros, so activations stay in a sane range; integer tensors are zeros.
/// Outputs are meaningless text, but the compute and memory traffic are those of the real model.
/// </summary>
public sealed class DummyWeightSource : IWeightSource
{
    DummyWeightSource(DummyWeightOptions options)
    {
        Options = options;
    }

    /// <summary>Creates a source with <paramref name="options"/> (defaults: random, seed 0, std 0.02).</summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative or non-finite <see cref="DummyWeightOptions.Std"/>, or a non-finite constant.</exception>
    public static DummyWeightSource Create(DummyWeightOptions? options = null)
    {
        options ??= new DummyWeightOptions();
        if (!double.IsFinite(options.Std) || options.Std < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.Std, "Std must be a finite, non-negative number.");
        }
        if (!double.IsFinite(options.ConstantValue))
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.ConstantValue, "ConstantValue must be finite.");
        }
        if (!Enum.IsDefined(options.Kind))
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.Kind, "Unknown dummy weight kind.");
        }
        return new DummyWeightSource(options);
    }

    /// <summary>The options this source was created with.</summary>
    public DummyWeightOptions Options { get; }

    /// <inheritdoc/>
    public string Description => Options.Kind == DummyWeightKind.Random
        ? string.Create(CultureInfo.InvariantCulture, $"dummy weights (random normal, std {Options.Std}, seed {Options.Seed})")
        : string.Create(CultureInfo.InvariantCulture, $"dummy weights (constant {Options.ConstantValue})");

    /// <summary>Always true: dummy weights exist for any name.</summary>
    public bool Contains(string name) => true;

    /// <summary>A new tensor of <paramref name="expectedShape"/>, in <paramref name="dtype"/> on <paramref name="device"/>;
    /// see the class summary for its values.</summary>
    public Tensor Load(string name, long[] expectedShape, ScalarType dtype, Device device)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(expectedShape);
        ArgumentNullException.ThrowIfNull(device);
        foreach (long d in expectedShape)
        {
            if (d < 0)
            {
                throw new CheckpointException($"{Description}: tensor '{name}' was asked for with a negative dimension: {TensorInfo.FormatShape(expectedShape)}");
            }
        }

        if (IsBias(name) || !torch.is_floating_point(dtype))
        {
            return torch.zeros(expectedShape, dtype, device);
        }
        if (IsNormWeight(name))
        {
            return torch.ones(expectedShape, dtype, device);
        }
        if (Options.Kind == DummyWeightKind.Constant)
        {
            return torch.full(expectedShape, Options.ConstantValue, dtype, device);
        }

        return RandomNormal(SeedFor(name), expectedShape, dtype, device);
    }

    /// <summary>Elements generated per batch of kernels (bounds the temporaries: about 24 bytes an element).</summary>
    internal long ChunkElements { get; set; } = 1L << 22;

    /// <summary>
    /// Normal noise * <see cref="DummyWeightOptions.Std"/>, computed on <paramref name="device"/> from a counter-based
    /// hash: element i is SplitMix64(i * golden + seed) turned into two 24-bit uniforms and then one normal value by
    /// Box-Muller. TorchSharp 0.107 can only create CPU generators, so <c>torch.randn</c> with a generator would not
    /// work on CUDA; this needs none, leaves every global RNG alone, and gives the same values on any device.
    /// </summary>
    Tensor RandomNormal(ulong seed, long[] shape, ScalarType dtype, Device device)
    {
        using var outer = torch.NewDisposeScope();
        var result = torch.empty(shape, dtype, device);
        long count = result.NumberOfElements;
        if (count > 0)
        {
            var flat = result.view(-1);
            Tensor Constant(long value) => torch.tensor(value, device: device);
            var shift16 = Constant(16); var shift27 = Constant(27); var shift30 = Constant(30); var shift31 = Constant(31); var shift40 = Constant(40);
            var low24 = Constant(0xFFFFFF);
            var mask27 = Constant((1L << 37) - 1); var mask30 = Constant((1L << 34) - 1); var mask31 = Constant((1L << 33) - 1);
            // Logical right shift of int64 values: arithmetic shift, then clear the sign-extended bits.
            static Tensor ShiftRight(Tensor z, Tensor shift, Tensor mask) => z.bitwise_right_shift(shift).bitwise_and_(mask);

            for (long start = 0; start < count; start += ChunkElements)
            {
                using var scope = torch.NewDisposeScope();
                long n = Math.Min(ChunkElements, count - start);
                var z = torch.arange(start, start + n, ScalarType.Int64, device);
                z.mul_(unchecked((long)0x9E3779B97F4A7C15UL)).add_(unchecked((long)seed)); // int64 arithmetic wraps
                z.bitwise_xor_(ShiftRight(z, shift30, mask30)).mul_(unchecked((long)0xBF58476D1CE4E5B9UL));
                z.bitwise_xor_(ShiftRight(z, shift27, mask27)).mul_(unchecked((long)0x94D049BB133111EBUL));
                z.bitwise_xor_(ShiftRight(z, shift31, mask31));
                const double Scale = 1.0 / (1 << 24);
                var u1 = ShiftRight(z, shift40, low24).to(ScalarType.Float32).add_(0.5).mul_(Scale); // in (0, 1)
                var u2 = ShiftRight(z, shift16, low24).to(ScalarType.Float32).add_(0.5).mul_(Scale);
                var normal = u1.log_().mul_(-2.0).sqrt_().mul_(u2.mul_(2 * Math.PI).cos_()).mul_(Options.Std);
                flat.narrow(0, start, n).copy_(normal);
            }
        }
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>The noise seed for <paramref name="name"/>: <see cref="DummyWeightOptions.Seed"/> mixed with a
    /// stable (FNV-1a) hash of the name through a SplitMix64 finalizer.</summary>
    public ulong SeedFor(string name)
    {
        ulong hash = 14695981039346656037UL;
        foreach (char c in name)
        {
            hash = (hash ^ (byte)c) * 1099511628211UL;
            hash = (hash ^ (byte)(c >> 8)) * 1099511628211UL;
        }
        ulong z = hash ^ (ulong)Options.Seed;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>True for the weight of a normalization layer (RMSNorm or LayerNorm), which should be ones.</summary>
    public static bool IsNormWeight(string name)
    {
        if (name.EndsWith("norm.weight", StringComparison.Ordinal)) // norm, layernorm, layer_norm, input_layernorm, ...
        {
            return true;
        }
        if (!name.EndsWith(".weight", StringComparison.Ordinal))
        {
            return false;
        }
        string stem = name[..^".weight".Length];
        string last = stem[(stem.LastIndexOf('.') + 1)..]; // GPT-2 / GPT-J / Falcon: ln_1, ln_2, ln_f, ln_attn, ...
        return last.StartsWith("ln_", StringComparison.Ordinal);
    }

    /// <summary>True for a bias (a name that is or ends in <c>bias</c> as its last segment), which should be zeros.</summary>
    public static bool IsBias(string name) => name == "bias" || name.EndsWith(".bias", StringComparison.Ordinal) || name.EndsWith("_bias", StringComparison.Ordinal);

    /// <summary>Nothing to release.</summary>
    public void Dispose()
    {
    }
}
