using Tern.Interop;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using static Tern.Tests.TensorChecks;

namespace Tern.Tests.Gpu;

/// <summary>The NVRTC kernels compile on this GPU and agree with the composite TorchSharp ops they replace.</summary>
public sealed class FusedKernelTests
{
    public FusedKernelTests() => ComputeOptions.ResolveDevice(DeviceKind.Cuda);

    public static TheoryData<ModelDType> DTypes => new() { ModelDType.Float32, ModelDType.BFloat16, ModelDType.Float16 };

    /// <param name="roundings">Roundings of the element type in the reference's last steps (a residual add after a linear map is two).</param>
    static void AssertClose(Tensor expected, Tensor actual, ModelDType dtype, string what, int roundings = 1)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad(); // the kernels step aside while autograd records (training)
        var e = expected.to(ScalarType.Float32).cpu();
        var a = actual.to(ScalarType.Float32).cpu();
        // one rounding of the element type, relative, plus a small absolute floor
        double rel = roundings * (dtype == ModelDType.Float32 ? 1e-5 : dtype == ModelDType.BFloat16 ? 1.0 / 64 : 1.0 / 512);
        var excess = ((a - e).abs() - (e.abs() * rel + rel)).max().item<float>();
        Assert.True(excess <= 0, $"{what} {dtype}: max |Δ| exceeds the bound by {excess}");
    }

    [Fact]
    public void KernelsCompile() => Assert.True(FusedKernels.Available, FusedKernels.UnavailableReason);

    [Fact]
    public void KernelsStepAsideWhileAutogradRecords()
    {
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(1, 64, device: CUDA).to(ScalarType.BFloat16);
        var w = torch.ones(64, device: CUDA).to(ScalarType.BFloat16);
        Assert.False(FusedKernels.TryRmsNorm(x, w, 1e-6, out _)); // grad enabled: no backward exists for the kernels
        using (torch.no_grad()) Assert.True(FusedKernels.TryRmsNorm(x, w, 1e-6, out _));
    }

    [Theory]
    [MemberData(nameof(DTypes))]
    public void RmsNormMatchesComposite(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad(); // the kernels step aside while autograd records (training)
        var t = dtype.ToScalarType();
        var x = torch.randn(3, 5, 4096, device: CUDA).to(t);
        var w = (torch.rand(4096, device: CUDA) + 0.5).to(t);
        Assert.True(FusedKernels.TryRmsNorm(x, w, 1e-6, out var fused));
        var xf = x.to(ScalarType.Float32);
        var reference = (xf * (xf.square().mean(new long[] { -1 }, keepdim: true) + 1e-6).rsqrt()).to(t) * w;
        AssertClose(reference, fused, dtype, "rms_norm");
    }

    /// <summary>The one-row-per-block LayerNorm against torch's layer_norm (rows of OPT-30B's 7,168 columns and of a width that is
    /// not a multiple of the block, with and without bias): within one rounding, and in 16 bits the same value in nearly every
    /// element (the same order of operations; only the statistics' summation order differs).</summary>
    [Theory]
    [MemberData(nameof(DTypes))]
    public void LayerNormMatchesTorch(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad(); // the kernels step aside while autograd records (training)
        var t = dtype.ToScalarType();
        foreach (int cols in new[] { 7168, 1000 })
            foreach (bool withBias in new[] { true, false })
            {
                var x = (torch.randn(3, 2, cols, device: CUDA) * 2 + 0.5).to(t);
                var w = (torch.rand(cols, device: CUDA) + 0.5).to(t);
                var b = withBias ? (torch.randn(cols, device: CUDA) * 0.1).to(t) : null;
                Assert.True(FusedKernels.TryLayerNorm(x, w, b, 1e-5, out var fused));
                var reference = F.layer_norm(x, new long[] { cols }, w, b, 1e-5);
                AssertClose(reference, fused, dtype, $"layer_norm, {cols} columns, bias {withBias}");
                if (dtype == ModelDType.Float32) continue; // fp32 shows the statistics' last bits, which 16-bit outputs round away
                double same = fused.eq(reference).to(ScalarType.Float32).mean().item<float>();
                Assert.True(same >= 0.99, $"layer_norm {dtype}, {cols} columns: only {same:P2} of the elements equal torch's");
            }
    }

    [Theory]
    [MemberData(nameof(DTypes))]
    public void GatedActivationMatchesComposite(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad(); // the kernels step aside while autograd records (training)
        var t = dtype.ToScalarType();
        var gu = torch.randn(2, 3, 2 * 700, device: CUDA).to(t);
        foreach (var (kind, act) in new (int, Func<Tensor, Tensor>)[] { (0, x => F.silu(x)), (1, x => F.relu(x)), (2, x => F.gelu(x)), (3, x => F.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh)) })
        {
            Assert.True(FusedKernels.TryGated(gu, 700, kind, out var fused));
            AssertClose(act(gu.narrow(-1, 0, 700)) * gu.narrow(-1, 700, 700), fused, dtype, $"gated kind {kind}");
        }
    }

    public static TheoryData<ModelDType, int, int> GemvShapes => new()
    {
        { ModelDType.BFloat16, 1000, 4096 }, { ModelDType.BFloat16, 333, 11008 }, { ModelDType.Float16, 1000, 4096 }, { ModelDType.Float16, 77, 520 },
    };

    [Theory]
    [MemberData(nameof(GemvShapes))]
    public void OneRowGemvMatchesLinear(ModelDType dtype, int n, int k)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad(); // the kernels step aside while autograd records (training)
        var t = dtype.ToScalarType();
        var x = torch.randn(1, 1, k, device: CUDA).to(t);
        var w = (torch.randn(n, k, device: CUDA) * 0.05).to(t);
        var b = torch.randn(n, device: CUDA).to(t);
        var r = torch.randn(1, 1, n, device: CUDA).to(t);
        Assert.True(FusedKernels.TryGemv(x, w, null, null, out var plain));
        Assert.True(FusedKernels.TryGemv(x, w, b, r, out var full));
        Assert.Equal(new long[] { 1, 1, n }, plain.shape);
        AssertClose(F.linear(x, w), plain, dtype, "gemv");
        AssertClose(r + F.linear(x, w, b), full, dtype, "gemv + bias + residual", roundings: 2);
        Assert.False(FusedKernels.TryGemv(torch.randn(2, k, device: CUDA).to(t), w, null, null, out _)); // more rows: cuBLAS
    }

    /// <summary>cos and signed sin tables [positions, rotary] of type <paramref name="t"/> on CUDA, as RotaryEmbedding lays them
    /// out (base 10,000; the sign of rotate_half in the sin table).</summary>
    static (Tensor Cos, Tensor Sin) RotaryTables(ScalarType t, int positions, int rotary)
    {
        var angles = torch.arange(positions, device: CUDA).to(ScalarType.Float32).unsqueeze(1)
            * torch.pow(10000.0, -torch.arange(0, rotary, 2, device: CUDA).to(ScalarType.Float32) / rotary);
        var emb = torch.cat(new[] { angles, angles }, 1);
        var sign = torch.cat(new[] { -torch.ones(rotary / 2, device: CUDA), torch.ones(rotary / 2, device: CUDA) });
        return (emb.cos().to(t), (emb.sin() * sign).to(t));
    }

    /// <summary>The rotary kernel on the keys of a fused qkv buffer (a strided view: what a sink step rotates where its keys lie)
    /// against x·cos + rotate_half(x)·sin, the queries and values left as they were.</summary>
    [Theory]
    [MemberData(nameof(DTypes))]
    public void RotaryOnAKeysViewMatchesTheComposite(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        int b = 2, tokens = 1, heads = 4, kvHeads = 2, d = 64, table = 40;
        var qkv = torch.randn(b, tokens, heads + 2 * kvHeads, d, device: CUDA).to(t);
        var before = qkv.clone();
        var (cos, sin) = RotaryTables(t, table, d);
        var positions = torch.tensor(new long[] { 37, 5 }, new long[] { b, tokens }).to(CUDA);
        var keys = qkv.narrow(2, heads, kvHeads);
        Assert.True(FusedKernels.TryRotaryViewInPlace(keys, d, d, positions, cos, sin));
        var x = before.narrow(2, heads, kvHeads).to(ScalarType.Float32);
        var c = cos.index_select(0, positions.flatten()).view(b, tokens, 1, d).to(ScalarType.Float32);
        var s = sin.index_select(0, positions.flatten()).view(b, tokens, 1, d).to(ScalarType.Float32);
        AssertClose(x * c + x.roll(d / 2, -1) * s, keys, dtype, "rotary on the keys' view");
        Assert.True(Same(qkv.narrow(2, 0, heads), before.narrow(2, 0, heads)), "queries changed");
        Assert.True(Same(qkv.narrow(2, heads + kvHeads, kvHeads), before.narrow(2, heads + kvHeads, kvHeads)), "values changed");
    }

    /// <summary>Each type with a full rotary, and bf16 with a partial one (NeoX's 25% of 64 dims).</summary>
    public static TheoryData<ModelDType, int> RotaryCases => new()
    {
        { ModelDType.Float32, 64 }, { ModelDType.BFloat16, 64 }, { ModelDType.Float16, 64 }, { ModelDType.BFloat16, 16 },
    };

    /// <summary>A sink step's rotations in one kernel (rotary_into): the queries in place and the new keys into the attended keys
    /// at the step's slot — bit for bit what rotating both in place and copying the keys there gives, the keys and values of the
    /// fused buffer and every other slot untouched, and with a partial rotary (NeoX) the dimensions past it copied.</summary>
    [Theory]
    [MemberData(nameof(RotaryCases))]
    public void RotaryIntoASlotEqualsRotatingInPlaceAndCopying(ModelDType dtype, int rotary)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        int b = 3, heads = 4, kvHeads = 2, d = 64, table = 40, cap = 9;
        var qkv = torch.randn(b, 1, heads + 2 * kvHeads, d, device: CUDA).to(t);
        var before = qkv.clone();
        var (cos, sin) = RotaryTables(t, table, rotary);
        var positions = torch.tensor(new long[] { 37, 5, 0 }, new long[] { b, 1 }).to(CUDA);
        var slot = torch.tensor(new long[] { 6 }).to(CUDA);
        var attended = torch.randn(b, kvHeads, cap, d, device: CUDA).to(t);
        var expected = attended.clone();
        Assert.True(FusedKernels.TryRotaryInto(attended, qkv.narrow(2, 0, heads), qkv.narrow(2, heads, kvHeads), rotary, positions, cos, sin, slot));
        Assert.True(Same(qkv.narrow(2, heads, 2 * kvHeads), before.narrow(2, heads, 2 * kvHeads)), "keys or values changed");
        var reference = before.clone();
        Assert.True(FusedKernels.TryRotaryViewInPlace(reference.narrow(2, 0, heads + kvHeads), d, rotary, positions, cos, sin));
        Assert.True(Same(reference.narrow(2, 0, heads), qkv.narrow(2, 0, heads)), "queries not rotated in place as rotary does");
        expected.index_copy_(2, slot, reference.narrow(2, heads, kvHeads).transpose(1, 2));
        Assert.True(Same(expected, attended), "keys not the in-place rotation copied into the slot");
    }

    /// <summary>StreamingLLM's moved block after a shift, rotated at its slot indices in one kernel (rotary_slots): bit for bit
    /// the rotary kernel's rotation of the same keys at those positions, the slots outside the block and the stored keys
    /// untouched; partial rotary dims copied.</summary>
    [Theory]
    [MemberData(nameof(RotaryCases))]
    public void RotarySlotsEqualTheRotaryKernelAtThoseIndices(ModelDType dtype, int rotary)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        int b = 2, kvHeads = 3, d = 64, cap = 50, start = 4, count = 40;
        var (cos, sin) = RotaryTables(t, cap, rotary);
        var keys = torch.randn(b, kvHeads, cap, d, device: CUDA).to(t);
        var stored = keys.clone();
        var attended = torch.randn(b, kvHeads, cap, d, device: CUDA).to(t);
        var before = attended.clone();
        Assert.True(FusedKernels.TryRotarySlots(attended, keys, start, count, rotary, cos, sin));
        Assert.True(Same(keys, stored), "stored keys changed");
        // The rotary kernel in place on [B, count, H, D] (one position per slot, the same for every row).
        var block = keys.narrow(2, start, count).permute(0, 2, 1, 3).contiguous();
        var positions = torch.arange(start, start + count, device: CUDA).to(ScalarType.Int64).expand(b, count).contiguous();
        Assert.True(FusedKernels.TryRotaryViewInPlace(block, d, rotary, positions, cos, sin));
        Assert.True(Same(attended.narrow(2, start, count), block.permute(0, 2, 1, 3)), "not the rotary kernel's rotation");
        Assert.True(Same(attended.narrow(2, 0, start), before.narrow(2, 0, start)), "slots before the block changed");
        Assert.True(Same(attended.narrow(2, start + count, cap - start - count), before.narrow(2, start + count, cap - start - count)),
            "slots after the block changed");
    }

    /// <summary>StreamingLLM's shift in place (shift_slots): the block moved down equals a copy through a temporary, bit for bit, for
    /// moves shorter than the block (the sink's case: each thread writes only slots it has read), longer than it (no overlap) and of
    /// one slot; the slots outside the destination untouched. A slot of 6 fp32 values (24 bytes) is not whole 16-byte vectors, a
    /// move up is not a shift, and one slot over a long block would walk too far a thread: all refused.</summary>
    [Theory]
    [InlineData(ModelDType.BFloat16, 4, 68, 180)]
    [InlineData(ModelDType.BFloat16, 4, 5, 120)]
    [InlineData(ModelDType.Float16, 0, 100, 60)]
    [InlineData(ModelDType.Float32, 4, 37, 219)]
    public void ShiftSlotsEqualsACopyThroughATemporary(ModelDType dtype, int to, int from, int count)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        var data = torch.randn(2, 3, 256, 128, device: CUDA).to(t);
        var expected = data.clone();
        expected.narrow(2, to, count).copy_(expected.narrow(2, from, count).clone());
        Assert.True(FusedKernels.TryShiftSlots(data, from, to, count));
        Assert.True(Same(data, expected), "not the copy through a temporary");
        Assert.False(FusedKernels.TryShiftSlots(torch.zeros(2, 3, 256, 6, device: CUDA), from, to, count));
        Assert.False(FusedKernels.TryShiftSlots(data, to, from, count)); // moving up
        Assert.False(FusedKernels.TryShiftSlots(data, 5, 4, 250)); // one slot over 250: a walk bound by latency, left to the copy
    }

    /// <summary>Decode attention over a partly filled cache with holes, GQA and a window, against softmax(q·kᵀ/√d)·v in fp32;
    /// up to the largest batch the kernel takes (16), and past it the composite path's turn.</summary>
    [Theory]
    [InlineData(ModelDType.Float32, 0, 3)]
    [InlineData(ModelDType.BFloat16, 0, 3)]
    [InlineData(ModelDType.BFloat16, 7, 3)]
    [InlineData(ModelDType.Float16, 0, 3)]
    [InlineData(ModelDType.BFloat16, 0, 16)]
    public void DecodeAttentionMatchesReference(ModelDType dtype, int window, int b)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad(); // the kernels step aside while autograd records (training)
        var t = dtype.ToScalarType();
        int heads = 8, kvHeads = 2, cap = 77, d = 64, filled = 50;
        var (keys, values, pos, qpos) = DecodeCache(t, b, kvHeads, cap, d, filled);
        pos[1].narrow(1, 5, 1).fill_(-1); // a hole at slot 5 of sequence 1, padding in the first 3 slots of sequence 2
        pos[2].narrow(1, 0, 3).fill_(-1);
        var q = torch.randn(b, heads, 1, d, device: CUDA).to(t);
        Assert.True(FusedKernels.TryDecodeAttention(q, keys, values, pos, qpos, window, 1.0 / Math.Sqrt(d), out var fused));
        AssertClose(DecodeReference(q, keys, values, pos, qpos, window, cap), fused, dtype, "decode attention");
        // The first slots of each head only (a static step's view of a cache sized for a longer prefill): fewer than are filled.
        const int slots = 45;
        Assert.True(FusedKernels.TryDecodeAttention(q, keys.narrow(2, 0, slots), values.narrow(2, 0, slots), pos.narrow(2, 0, slots), qpos,
            window, 1.0 / Math.Sqrt(d), out var prefix));
        AssertClose(DecodeReference(q, keys, values, pos, qpos, window, slots), prefix, dtype, "decode attention over the first slots");
        var (k17, v17, pos17, qpos17) = DecodeCache(t, 17, kvHeads, cap, d, filled);
        Assert.False(FusedKernels.TryDecodeAttention(torch.randn(17, heads, 1, d, device: CUDA).to(t), k17, v17, pos17, qpos17, window,
            1.0 / Math.Sqrt(d), out _));
    }

    /// <summary>A decode step's cache on CUDA: random keys and values [B,Hkv,Cap,D] of type <paramref name="t"/>, positions
    /// 0 … filled − 1 in the first slots of every row and head (−1 after), and the query at position filled − 1 in each row.</summary>
    internal static (Tensor Keys, Tensor Values, Tensor Positions, Tensor QueryPositions) DecodeCache(ScalarType t, int b, int kvHeads, int cap, int d, int filled)
    {
        var positions = torch.arange(cap, device: CUDA).to(ScalarType.Int64).expand(b, kvHeads, cap).clone();
        positions.narrow(2, filled, cap - filled).fill_(-1);
        return (torch.randn(b, kvHeads, cap, d, device: CUDA).to(t), torch.randn(b, kvHeads, cap, d, device: CUDA).to(t), positions,
            torch.full(new long[] { b, 1 }, filled - 1, ScalarType.Int64, CUDA));
    }

    /// <summary>softmax(q·kᵀ/√d)·v in fp32 over the first <paramref name="slots"/> slots, a key at position kp visible to the
    /// query at p when 0 ≤ kp ≤ p (and p − kp &lt; window): q [B,H,1,D], keys and values [B,Hkv,Cap,D] → [B,1,H·D].</summary>
    static Tensor DecodeReference(Tensor q, Tensor keys, Tensor values, Tensor pos, Tensor qpos, int window, int slots)
    {
        long b = q.size(0), heads = q.size(1), groups = heads / keys.size(1), d = q.size(3);
        var kp = pos.narrow(2, 0, slots).unsqueeze(2);                           // [B,Hkv,1,slots]
        var visible = kp.ge(0) & kp.le(qpos.view(b, 1, 1, 1));
        if (window > 0) visible &= (qpos.view(b, 1, 1, 1) - kp).lt(window);
        var kx = keys.narrow(2, 0, slots).to(ScalarType.Float32).repeat_interleave(groups, 1);
        var vx = values.narrow(2, 0, slots).to(ScalarType.Float32).repeat_interleave(groups, 1);
        var mask = visible.repeat_interleave(groups, 1);
        var scores = q.to(ScalarType.Float32).matmul(kx.transpose(2, 3)) / Math.Sqrt(d);
        return F.softmax(scores.masked_fill(mask.logical_not(), double.NegativeInfinity), -1).matmul(vx).reshape(b, 1, heads * d);
    }

    /// <summary>Decode attention over a cache of 1,500 slots of which a 1,400-slot prefix is attended, 1,300 filled, with holes
    /// (a run of 64 keys with nothing visible, and partial ones): against the same reference.</summary>
    [Theory]
    [InlineData(ModelDType.BFloat16)]
    [InlineData(ModelDType.Float32)]
    [InlineData(ModelDType.Float16)]
    public void DecodeAttentionOverALongPrefixWithHolesMatchesReference(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        int b = 2, heads = 4, kvHeads = 2, cap = 1500, slots = 1400, d = 128, filled = 1300;
        var (keys, values, pos, qpos) = DecodeCache(t, b, kvHeads, cap, d, filled);
        pos[1].narrow(1, 100, 300).fill_(-1);
        var q = (torch.randn(b, heads, 1, d, device: CUDA) * 3).to(t); // peaked scores
        Assert.True(FusedKernels.TryDecodeAttention(q, keys.narrow(2, 0, slots), values.narrow(2, 0, slots), pos.narrow(2, 0, slots), qpos, 0,
            1.0 / Math.Sqrt(d), out var output));
        AssertClose(DecodeReference(q, keys, values, pos, qpos, 0, slots), output, dtype, "decode attention over a long prefix with holes");
    }

    /// <summary>Decode attention with the 7B step's 32 query heads of 128 dims (here over 8 KV heads) and a 4,096-slot cache, where
    /// each block walks several tiles with the online softmax: holes within a chunk, a whole masked tile, a peak late in a chunk (the
    /// running max grows), against the reference; and a prefix of the slots gives the same bits as all of them with the rest masked.</summary>
    [Theory]
    [InlineData(ModelDType.BFloat16)]
    [InlineData(ModelDType.Float32)]
    [InlineData(ModelDType.Float16)]
    public void DecodeAttentionOverManyTilesABlockMatchesReference(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        int b = 1, heads = 32, kvHeads = 8, cap = 4096, d = 128, filled = 3000;
        var (keys, values, pos, qpos) = DecodeCache(t, b, kvHeads, cap, d, filled);
        pos[0].narrow(1, 200, 5).fill_(-1);
        pos[0].narrow(1, 1000, 100).fill_(-1);
        var q = (torch.randn(b, heads, 1, d, device: CUDA) * 2).to(t);
        keys[0].narrow(1, 2900, 1).copy_((q[0].narrow(1, 0, 1).reshape(kvHeads, heads / kvHeads, d)[.., 0..1, ..] * 4).to(t)); // a late peak
        Assert.True(FusedKernels.TryDecodeAttention(q, keys, values, pos, qpos, 0, 1.0 / Math.Sqrt(d), out var whole));
        AssertClose(DecodeReference(q, keys, values, pos, qpos, 0, cap), whole, dtype, "decode attention over many tiles a block");
        Assert.True(FusedKernels.TryDecodeAttention(q, keys.narrow(2, 0, filled), values.narrow(2, 0, filled), pos.narrow(2, 0, filled), qpos, 0,
            1.0 / Math.Sqrt(d), out var prefix));
        Assert.True(Same(whole, prefix), "a prefix of the slots differs from all of them with the rest masked");
    }

    /// <summary>LaughingHyena's fused modal step against the composite of <see cref="Tern.Distillation.ModalRecurrence.Step"/>
    /// (the same recurrence with the kernels suspended): outputs and the updated state, a row that does not step keeping its state,
    /// K not a multiple of anything and every power-of-two S up to 32.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(8)]
    [InlineData(32)]
    public void ModalStepMatchesComposite(int modes)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        int channels = 4;
        var random = new Random(modes);
        System.Numerics.Complex Draw(double radius) => System.Numerics.Complex.FromPolarCoordinates(radius * (0.3 + 0.7 * random.NextDouble()), Math.PI * random.NextDouble());
        var poles = Enumerable.Range(0, channels * modes).Select(_ => Draw(0.999)).ToArray();
        var residues = Enumerable.Range(0, channels * modes).Select(_ => Draw(2)).ToArray();
        var direct = Enumerable.Range(0, channels).Select(_ => random.NextDouble() - 0.5).ToArray();
        using var recurrence = Tern.Distillation.ModalRecurrence.Create(Tern.Distillation.ModalFilters.Create("test", modes, poles, residues, direct), CUDA);
        var state = torch.randn(new long[] { 3, channels, 5, 7, modes }, ScalarType.ComplexFloat32, device: CUDA);
        var w = torch.randn(3, channels, 5, 7, device: CUDA);
        var live = torch.tensor(new[] { true, false, true }).to(CUDA);
        var (fusedState, compositeState) = (state.clone(), state.clone());
        var fused = recurrence.Step(fusedState, w, live);
        Tensor composite;
        using (FusedKernels.Suspend()) composite = recurrence.Step(compositeState, w, live);
        AssertClose(composite, fused, ModelDType.Float32, "modal step outputs", roundings: 4);
        AssertClose(torch.view_as_real(compositeState), torch.view_as_real(fusedState), ModelDType.Float32, "modal step state");
        Assert.True(Same(fusedState[1], state[1]), "a row that does not step keeps its state");
        Assert.False(Same(fusedState[0], state[0]));
    }
}
