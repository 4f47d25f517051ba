using Tern.Generation;
using Tern.Interop;
using Tern.Models;
using Tern.Runtime;
using Tern.Tokenization;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Tests.Runtime;

/// <summary>
/// The CPU's fused kernels (<see cref="CpuKernels"/>, reached through <see cref="FusedKernels"/>) against the composite
/// libtorch path they replace: fp32 within float rounding, bf16 within one bf16 step of the result; autograd keeps the
/// composite path; the default model generates the same greedy tokens with and without them, in fp32 and bf16.
/// </summary>
public class CpuKernelTests
{
    static Tensor Random(ScalarType type, params long[] shape)
    {
        torch.manual_seed(shape.Aggregate(7L, (a, b) => a * 31 + b));
        return torch.randn(shape).to(type);
    }

    // |a − b| ≤ tolerance · max(1, |b|) elementwise: one bf16 step is 2⁻⁸ of the value.
    static void Close(Tensor expected, Tensor actual, double tolerance)
    {
        Assert.Equal(expected.shape, actual.shape);
        Assert.Equal(expected.dtype, actual.dtype);
        using var scope = torch.NewDisposeScope();
        var e = expected.to(ScalarType.Float64);
        var a = actual.to(ScalarType.Float64);
        double worst = ((e - a).abs() / e.abs().clamp_min(1)).max().item<double>();
        Assert.True(worst <= tolerance, $"relative difference {worst} > {tolerance}");
    }

    static double Tolerance(ScalarType type) => type == ScalarType.BFloat16 ? 1.0 / 128 : 1e-5;

    public static TheoryData<string> Types => new() { "fp32", "bf16" };

    static ScalarType TypeOf(string name) => name == "bf16" ? ScalarType.BFloat16 : ScalarType.Float32;

    [Theory]
    [MemberData(nameof(Types))]
    public void RmsNormMatchesTheComposite(string typeName)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var type = TypeOf(typeName);
        var x = Random(type, 3, 5, 67); // an odd width: the vector loop's tail
        var w = Random(type, 67);
        Assert.True(FusedKernels.TryRmsNorm(x, w, 1e-6, out var fused));
        Tensor composite;
        using (FusedKernels.Suspend()) composite = Norms.Rms(x, w, 1e-6);
        Close(composite, fused, Tolerance(type));
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void RotaryInPlaceMatchesTheComposite(string typeName)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var type = TypeOf(typeName);
        const int heads = 5, rotated = 3, headDim = 24, rotaryDim = 16; // partial rotary: the rest of each head stays
        var qkv = Random(type, 2, 3, heads, headDim);
        var positions = torch.tensor(new long[] { 0, 4, 9, -1, 2, 7 }); // −1: padding, rotated as position 0
        var angles = torch.arange(12).to(ScalarType.Float32).unsqueeze(1) * torch.linspace(0.1, 1.0, rotaryDim / 2).unsqueeze(0);
        var cos = torch.cat(new[] { angles.cos(), angles.cos() }, 1).to(type);
        var sin = torch.cat(new[] { -angles.sin(), angles.sin() }, 1).to(type); // the sign of rotate_half lives in the table
        var expected = qkv.clone();
        var flat = positions.clamp_min(0);
        var part = expected.narrow(2, 0, rotated).narrow(-1, 0, rotaryDim);
        var c = cos.index_select(0, flat).view(2, 3, 1, rotaryDim);
        var s = sin.index_select(0, flat).view(2, 3, 1, rotaryDim);
        part.copy_(torch.addcmul(part * c, part.roll(rotaryDim / 2, -1), s, 1));

        Assert.False(FusedKernels.TryRotaryInPlace(Random(type, 1, 65, heads, headDim), rotated, headDim, rotaryDim, torch.zeros(65, ScalarType.Int64), cos, sin));
        Assert.True(FusedKernels.TryRotaryInPlace(qkv, rotated, headDim, rotaryDim, positions, cos, sin));
        Close(expected, qkv, Tolerance(type));
        Assert.True(qkv.narrow(2, rotated, heads - rotated).equal(expected.narrow(2, rotated, heads - rotated)).all().item<bool>());
        Assert.True(qkv.narrow(2, 0, rotated).narrow(-1, rotaryDim, headDim - rotaryDim).equal(
            expected.narrow(2, 0, rotated).narrow(-1, rotaryDim, headDim - rotaryDim)).all().item<bool>());
    }

    [Theory]
    [InlineData("bf16", 1100, 20, 1024)] // a last block of four outputs; three slices of k, the later ones added to the earlier
    [InlineData("bf16", 1000, 17, 1024)] // 125 blocks: a last tile of two blocks; 34 rows: a last tile of two rows
    [InlineData("bf16", 100, 150, 1024)] // 300 rows over the cores, several chunks each
    [InlineData("bf16", 45, 9, 75)]      // k no multiple of 8 (the packing's scalar tail), one slice; one tile of blocks, the last partial
    [InlineData("bf16", 4100, 3, 1024)]  // 513 blocks in groups packed one after another (255, 255, 3)
    [InlineData("fp32", 1100, 20, 1024)]
    [InlineData("fp32", 45, 9, 75)]
    [InlineData("fp32", 2100, 3, 1024)]  // 263 blocks in groups packed one after another (126, 126, 11)
    public void PrefillsMatchTheExactProduct(string typeName, int outputs, int rowsPerSequence, int inputs)
    {
        // fp32 prefills take the packed GEMM where MKL runs generic code (non-Intel CPUs), bf16 ones where the CPU lacks bf16
        // arithmetic: forced here so that every host checks it.
        CpuKernels.OwnFp32Everywhere = CpuKernels.WidenBf16Everywhere = true;
        try
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var type = TypeOf(typeName);
            var x = Random(type, 2, rowsPerSequence, inputs);
            var w = Random(type, outputs, inputs);
            Assert.True(FusedKernels.TryGemv(x, w, null, null, out var fused));
            var exact = F.linear(x.to(ScalarType.Float32), w.to(ScalarType.Float32)); // fp32 products of the same values
            // fp32: MKL and the kernel sum 1,024 products in different orders (~4e-5 of an output near 1).
            Close(exact.to(type), fused, type == ScalarType.Float32 ? 1e-4 : Tolerance(type));
        }
        finally
        {
            CpuKernels.OwnFp32Everywhere = CpuKernels.WidenBf16Everywhere = false;
        }
    }

    [Theory]
    [InlineData("fp32", 1, 1, 1, false, 64)]      // one cached entry
    [InlineData("fp32", 1, 1, 200, false, 64)]
    [InlineData("fp32", 2, 3, 700, false, 64)]    // grouped queries, rows, split over the cores
    [InlineData("bf16", 1, 1, 200, false, 64)]
    [InlineData("bf16", 2, 3, 700, false, 64)]
    [InlineData("fp32", 3, 2, 300, true, 64)]     // q read in place from a step's fused [q | k | v] projection
    [InlineData("bf16", 3, 2, 300, true, 64)]
    [InlineData("fp32", 2, 2, 203, false, 40)]    // a head size that is no multiple of 64; keys not a multiple of 4
    [InlineData("bf16", 1, 1, 6, false, 128)]
    [InlineData("bf16", 2, 2, 203, false, 80)]    // 64 columns in registers, the other 16 through the sums in memory
    public void UnmaskedDecodeAttentionMatchesSdpaOverACachesView(string typeName, int rows, int groups, int length, bool projectionView, int dim)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var type = TypeOf(typeName);
        const int kvHeads = 2, capacity = 1024;
        // A cache's first `length` slots: rows of D contiguous, heads and batch rows at the capacity's strides.
        var keys = Random(type, rows, kvHeads, capacity, dim).narrow(2, 0, length);
        var values = (Random(type, rows, kvHeads, capacity, dim) * 2).narrow(2, 0, length);
        var q = Random(type, rows, kvHeads, groups, dim) * 3; // sharper softmax than unit scores
        if (projectionView)
        {
            // As attention takes it: [B, 1, H + 2·Hkv, D] → the query heads, transposed to [B, H, 1, D], grouped by KV head.
            var qkv = Random(type, rows, 1, kvHeads * groups + 2 * kvHeads, dim) * 3;
            q = qkv.narrow(2, 0, kvHeads * groups).transpose(1, 2).reshape(rows, kvHeads, groups, dim);
            Assert.False(q.is_contiguous()); // rows a projection row apart
        }
        Assert.True(FusedKernels.TryUnmaskedDecodeAttention(q, keys, values, out var fused));
        Close(F.scaled_dot_product_attention(q, keys, values), fused, Tolerance(type));
    }

    [Theory]
    [InlineData(1, 6, 37)]
    [InlineData(2, 4, 128)]
    public void Bf16CausalAttentionWidenedMatchesSdpa(int rows, int heads, int length)
    {
        // What CPUs without bf16 arithmetic take for a bf16 prefill's attention; forced here so that every host checks it.
        CpuKernels.WidenBf16Everywhere = true;
        try
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var q = Random(ScalarType.BFloat16, rows, heads, length, 64) * 3;
            var k = Random(ScalarType.BFloat16, rows, heads, length + 1, 64).narrow(2, 1, length); // a view, as a cache's
            var v = Random(ScalarType.BFloat16, rows, heads, length, 64);
            Assert.True(FusedKernels.TryWidenedCausalAttention(q, k, v, out var widened));
            // The same maths in fp64, rounded once; and libtorch's bf16 kernel, within its own rounding.
            var expected = F.scaled_dot_product_attention(q.to(ScalarType.Float64), k.to(ScalarType.Float64), v.to(ScalarType.Float64), is_casual: true);
            Close(expected.to(ScalarType.BFloat16), widened, Tolerance(ScalarType.BFloat16));
            Close(F.scaled_dot_product_attention(q, k, v, is_casual: true), widened, 2 * Tolerance(ScalarType.BFloat16));
            Assert.False(FusedKernels.TryWidenedCausalAttention(q.to(ScalarType.Float32), k.to(ScalarType.Float32), v.to(ScalarType.Float32), out _));
        }
        finally
        {
            CpuKernels.WidenBf16Everywhere = false;
        }
    }

    [Theory]
    [InlineData("fp32", "silu")]
    [InlineData("fp32", "relu")]
    [InlineData("fp32", "gelu_pytorch_tanh")]
    [InlineData("bf16", "silu")]
    [InlineData("bf16", "relu")]
    public void GatedActivationMatchesTheComposite(string typeName, string activation)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var type = TypeOf(typeName);
        var act = Activations.Get(activation, null!, "hidden_act");
        var gateUp = Random(type, 2, 3, 2 * 37);
        Assert.True(FusedKernels.TryGated(gateUp, 37, act.Kind, out var fused));
        Tensor composite;
        using (FusedKernels.Suspend()) composite = act.Gated(gateUp, 37);
        Close(composite, fused, Tolerance(type));
    }

    [Fact]
    public void ExactGeluAndAutogradKeepTheComposite()
    {
        using var scope = torch.NewDisposeScope();
        var x = Random(ScalarType.Float32, 2, 16);
        using (torch.no_grad()) Assert.False(FusedKernels.TryGated(x, 8, Activations.Get("gelu", null!, "hidden_act").Kind, out _));
        using (torch.enable_grad()) Assert.False(FusedKernels.TryRmsNorm(x, torch.ones(16), 1e-6, out _)); // no backward for raw memory
        using (torch.no_grad())
        using (FusedKernels.Suspend()) Assert.False(FusedKernels.TryRmsNorm(x, torch.ones(16), 1e-6, out _));
    }

    [Theory]
    [InlineData(1, false, false, 72)]
    [InlineData(1, true, true, 72)]
    [InlineData(7, true, false, 72)]
    [InlineData(7, false, true, 72)]
    [InlineData(6, true, true, 75)] // a width that is not a whole number of vectors
    [InlineData(40, true, true, 72)] // a prefill: the packed GEMM
    [InlineData(80, false, true, 72)] // a prefill past one chunk of 64 rows
    public void Bf16LinearMatchesTheComposite(int rows, bool withBias, bool withResidual, int width)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var x = Random(ScalarType.BFloat16, 1, rows, width);
        var w = Random(ScalarType.BFloat16, 45, width);
        var bias = withBias ? Random(ScalarType.BFloat16, 45) : null;
        var residual = withResidual ? Random(ScalarType.BFloat16, 1, rows, 45) : null;
        // Where the CPU has bf16 arithmetic, prefills stay with libtorch's (oneDNN's) bf16 GEMM; the own kernels are forced
        // below so that every host checks them.
        Assert.Equal(rows <= 16 || CpuKernels.EmulatesBf16, FusedKernels.TryGemv(x, w, bias, residual, out _));
        CpuKernels.WidenBf16Everywhere = true;
        try
        {
            Assert.True(FusedKernels.TryGemv(x, w, bias, residual, out var fused));
            var expected = F.linear(x, w, bias);
            if (residual is not null) expected = residual + expected;
            // Where the composite rounds between the product, the bias and the residual differs by libtorch's kernel: within
            // two bf16 steps of the largest output.
            Assert.Equal(expected.shape, fused.shape);
            double worst = (expected.to(ScalarType.Float32) - fused.to(ScalarType.Float32)).abs().max().item<float>();
            Assert.True(worst <= expected.to(ScalarType.Float32).abs().max().item<float>() / 64, $"difference {worst}");
        }
        finally
        {
            CpuKernels.WidenBf16Everywhere = false;
        }
        // fp32: libtorch's MKL call, except where MKL runs its generic kernels (non-Intel CPUs) and the own kernels take it.
        Assert.Equal(CpuKernels.OwnFp32Products && (rows <= 16 || CpuKernels.PackedGemmSupported),
            FusedKernels.TryGemv(x.to(ScalarType.Float32), w.to(ScalarType.Float32), null, null, out _));
    }

    [Theory]
    [InlineData("fp32", 1)]
    [InlineData("fp32", 5)]
    [InlineData("bf16", 1)]
    [InlineData("bf16", 5)]
    public void LargeDecodeProductsAreSplitOverTheCoresAndMatchTheComposite(string typeName, int rows)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var type = TypeOf(typeName);
        // 2072×2048 passes the split threshold (4M elements); 2072 rows of W do not halve into whole 16-column blocks.
        var x = Random(type, 1, rows, 2048);
        var w = Random(type, 2072, 2048);
        var bias = Random(type, 2072);
        var residual = Random(type, 1, rows, 2072);
        Assert.True(FusedKernels.TryGemv(x, w, bias, residual, out var fused));
        var expected = residual + F.linear(x, w, bias);
        Assert.Equal(expected.shape, fused.shape);
        Assert.Equal(type, fused.dtype);
        double worst = (expected.to(ScalarType.Float32) - fused.to(ScalarType.Float32)).abs().max().item<float>();
        double scale = expected.to(ScalarType.Float32).abs().max().item<float>();
        Assert.True(worst <= scale * (type == ScalarType.BFloat16 ? 1.0 / 64 : 1e-5), $"difference {worst} of {scale}");
    }

    [Theory]
    [InlineData(ScalarType.BFloat16, 1, 72, 45)]
    [InlineData(ScalarType.BFloat16, 6, 75, 45)]
    [InlineData(ScalarType.BFloat16, 3, 2048, 2072)] // split over the cores
    [InlineData(ScalarType.Float32, 1, 72, 45)]
    [InlineData(ScalarType.Float32, 6, 75, 45)]
    [InlineData(ScalarType.Float32, 1, 384, 1152)] // split over the cores (the default model's qkv_proj)
    [InlineData(ScalarType.Float32, 8, 384, 1411)] // split, two blocks of four rows, an output count no block size divides
    [InlineData(ScalarType.BFloat16, 8, 384, 1411)] // bf16 widened in registers, two passes of four rows over each weight triple
    [InlineData(ScalarType.BFloat16, 5, 40, 33)]    // a width with 8 columns past the last block of 16; a pass of one row
    [InlineData(ScalarType.Float32, 2, 40, 34)]     // a last triple of one weight row
    [InlineData(ScalarType.Float32, 12, 384, 302)]  // three passes (each prefetching a third), split, a last triple of two rows
    [InlineData(ScalarType.BFloat16, 16, 200, 70)]  // four passes, a width past the last block of 8
    [InlineData(ScalarType.Float32, 13, 40, 35)]    // with AVX-512: a pass of eight rows, one of four, one of one; 8 columns past the wide blocks
    [InlineData(ScalarType.BFloat16, 9, 24, 7)]     // with AVX-512: one wide block of 16 and a tail of 8; a last triple of one row
    [InlineData(ScalarType.BFloat16, 13, 200, 70)]  // bf16 dot products: a pass of eight rows and one of five; a tail of 8 past 32s
    [InlineData(ScalarType.BFloat16, 4, 40, 34)]    // bf16 dot products: the tile of four rows; one block of 32; a last triple of one row
    public void OwnProductsMatchTheCompositeOnEveryCpu(ScalarType type, int rows, int width, int outputs)
    {
        // Tern's product kernel is what CPUs without bf16 arithmetic take for bf16 (widening) and non-Intel CPUs for fp32 decode
        // products; forced here so that every host checks both, in passes of four rows and, with AVX-512, of eight; and, where
        // the CPU has the bf16 dot product, its tiles.
        bool wide = CpuKernels.WideTiles, dots = CpuKernels.Bf16Dots;
        CpuKernels.WidenBf16Everywhere = CpuKernels.OwnFp32Everywhere = true;
        try
        {
            CpuKernels.Bf16Dots = false;
            foreach (bool tiles in System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? new[] { false, true } : new[] { false })
            {
                CpuKernels.WideTiles = tiles;
                Check();
            }
            CpuKernels.Bf16Dots = true;
            if (CpuKernels.Bf16Dots) Check();
        }
        finally
        {
            CpuKernels.WidenBf16Everywhere = CpuKernels.OwnFp32Everywhere = false;
            CpuKernels.WideTiles = wide;
            CpuKernels.Bf16Dots = dots;
        }

        void Check()
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var x = Random(type, 1, rows, width);
            var w = Random(type, outputs, width);
            var bias = Random(type, outputs);
            var residual = Random(type, 1, rows, outputs);
            double bound = type == ScalarType.BFloat16 ? 1.0 / 64 : 1e-5; // one bf16 rounding of the output, or fp32 summation order
            Assert.True(FusedKernels.TryGemv(x, w, bias, residual, out var fused));
            var expected = (residual + F.linear(x, w, bias)).to(ScalarType.Float32);
            double worst = (expected - fused.to(ScalarType.Float32)).abs().max().item<float>();
            Assert.True(worst <= expected.abs().max().item<float>() * bound, $"difference {worst}");
            Assert.True(FusedKernels.TryGemv(x, w, null, null, out var plain));
            var product = F.linear(x, w).to(ScalarType.Float32);
            double worstPlain = (product - plain.to(ScalarType.Float32)).abs().max().item<float>();
            Assert.True(worstPlain <= product.abs().max().item<float>() * bound, $"difference {worstPlain} without bias and residual");
        }
    }

    [Theory]
    [InlineData(4)]
    [InlineData(8)]
    public void TheBf16DotTilesEncodeOnEveryHost(int rows)
    {
        // Encoded at first use only where the CPU has the bf16 dot product: checked here wherever the tests run.
        var code = CpuKernels.DotTiles.Encode(rows);
        var decoder = Iced.Intel.Decoder.Create(64, code);
        var instructions = new List<Iced.Intel.Instruction>();
        while (decoder.IP < (ulong)code.Length) instructions.Add(decoder.Decode());
        Assert.DoesNotContain(instructions, i => i.IsInvalid);
        Assert.Equal(3 * rows, instructions.Count(i => i.Code == Iced.Intel.Code.EVEX_Vdpbf16ps_zmm_k1z_zmm_zmmm512b32));
        // Each sum stored once into the output (a lane at a time) and once into the sums buffer (four at a time); both paths return.
        Assert.Equal(3 * rows, instructions.Count(i => i.Mnemonic == Iced.Intel.Mnemonic.Vextractps && i.Op0Kind == Iced.Intel.OpKind.Memory));
        Assert.Equal(3 * rows / 4, instructions.Count(i => i.Mnemonic == Iced.Intel.Mnemonic.Vmovups && i.Op0Kind == Iced.Intel.OpKind.Memory));
        Assert.Equal(2, instructions.Count(i => i.Mnemonic == Iced.Intel.Mnemonic.Ret));
        Assert.Equal(Iced.Intel.Mnemonic.Ret, instructions[^1].Mnemonic);
    }

    [Fact]
    public unsafe void GeneratedCodeIsMappedAndRuns()
    {
        // The dot tiles' mapping, on every Linux host (the tiles themselves need AVX512_BF16): mov eax, 42; ret.
        if (!OperatingSystem.IsLinux() || System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture != System.Runtime.InteropServices.Architecture.X64) return;
        var code = ExecutableMemory.TryMap(new byte[] { 0xB8, 42, 0, 0, 0, 0xC3 });
        Assert.True(code != null);
        Assert.Equal(42, ((delegate* unmanaged<int>)code)());
        Assert.True(ExecutableMemory.TryMap(ReadOnlySpan<byte>.Empty) == null);
    }

    [Fact]
    public void AProductsRowDoesNotDependOnTheRowsBesideIt()
    {
        // Served requests give the tokens they give alone: a row of x gets the same bits in a batch of 2 as in one of 13 (passes
        // of four rows and of eight), with every bf16 product kernel of several rows this host has.
        bool wide = CpuKernels.WideTiles, dots = CpuKernels.Bf16Dots;
        CpuKernels.WidenBf16Everywhere = true;
        try
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var kernels = new List<(bool Tiles, bool Dots)> { (false, false) };
            if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported) kernels.Add((true, false));
            CpuKernels.Bf16Dots = true;
            if (CpuKernels.Bf16Dots) kernels.Add((false, true));
            foreach (var (tiles, withDots) in kernels)
            {
                (CpuKernels.WideTiles, CpuKernels.Bf16Dots) = (tiles, withDots);
                // Widths with and without a tail past the last block of 32; rows of the first pass (a whole tile of eight) and of
                // the second (five rows).
                foreach (int width in new[] { 200, 256 })
                {
                    var x = Random(ScalarType.BFloat16, 13, width);
                    var w = Random(ScalarType.BFloat16, 72, width);
                    Assert.True(FusedKernels.TryGemv(x, w, null, null, out var all));
                    foreach (int first in new[] { 2, 9 })
                    {
                        Assert.True(FusedKernels.TryGemv(x.narrow(0, first, 2), w, null, null, out var two));
                        Assert.True(all.narrow(0, first, 2).equal(two).all().item<bool>(), $"wide tiles {tiles}, dots {withDots}, width {width}, rows from {first}");
                    }
                }
            }
        }
        finally
        {
            CpuKernels.WidenBf16Everywhere = false;
            (CpuKernels.WideTiles, CpuKernels.Bf16Dots) = (wide, dots);
        }
    }

    [Theory]
    [InlineData(ScalarType.Float32, 8192)]
    [InlineData(ScalarType.BFloat16, 8192)]
    [InlineData(ScalarType.BFloat16, 37)] // a row past its last block of 8
    [InlineData(ScalarType.Float32, 5)]   // shorter than a block
    public void ArgMaxMatchesLibtorchWithTiesNansAndInfinities(ScalarType type, int n)
    {
        using var scope = torch.NewDisposeScope();
        var x = Random(type, 7, n);
        // Row 1: a tie of the largest value (the first wins); 2: a NaN after the largest (the NaN wins); 3: every value −inf;
        // 4: two NaNs (the first wins); 5: +inf at the end; 6: −0 before +0 as the largest.
        x[1][n / 3] = x[1][n - 1] = torch.tensor(100f).to(type);
        x[2][0] = torch.tensor(100f).to(type);
        x[2][n - 1] = torch.tensor(float.NaN).to(type);
        x[3].fill_(float.NegativeInfinity);
        x[4][n / 2] = x[4][1] = torch.tensor(float.NaN).to(type);
        x[5][n - 1] = torch.tensor(float.PositiveInfinity).to(type);
        x[6].fill_(-1f);
        x[6][n / 4] = torch.tensor(-0f).to(type);
        x[6][n - 1] = torch.tensor(0f).to(type);
        Assert.True(FusedKernels.TryArgMax(x, out var fused));
        Assert.Equal(x.argmax(-1).data<long>().ToArray(), fused.data<long>().ToArray());
    }

    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float32)]
    public void CacheAppendWritesWhatTheCopiesWrite(ScalarType type)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        // A step's keys and values as the model hands them over: views [B, Hkv, 1, D] of its projection [B, 1, Hq + 2·Hkv, D].
        var projection = Random(type, 3, 1, 8, 16);
        var (k, v) = (projection.narrow(2, 4, 2).transpose(1, 2), projection.narrow(2, 6, 2).transpose(1, 2));
        var positions = torch.tensor(new long[] { 5, 9, 2 }).reshape(3, 1);
        Tensor Cache() => Random(type, 3, 2, 7, 16);
        var (keys, values, cachePositions) = (Cache(), Cache(), torch.arange(3 * 2 * 7, ScalarType.Int64).reshape(3, 2, 7));
        var (expectedKeys, expectedValues, expectedPositions) = (keys.clone(), values.clone(), cachePositions.clone());
        expectedKeys.narrow(2, 4, 1).copy_(k);
        expectedValues.narrow(2, 4, 1).copy_(v);
        expectedPositions.narrow(2, 4, 1).copy_(positions.unsqueeze(1));
        Assert.True(FusedKernels.TryCacheAppendAt(keys, values, cachePositions, k, v, positions, 4));
        Assert.Equal(0f, (keys - expectedKeys).abs().max().to(ScalarType.Float32).item<float>());
        Assert.Equal(0f, (values - expectedValues).abs().max().to(ScalarType.Float32).item<float>());
        Assert.Equal(expectedPositions.data<long>().ToArray(), cachePositions.data<long>().ToArray());
        // What it does not take, the copies serve: two new entries a row, a slot past the capacity.
        Assert.False(FusedKernels.TryCacheAppendAt(keys, values, cachePositions, torch.cat(new[] { k, k }, 2), torch.cat(new[] { v, v }, 2), positions, 4));
        Assert.False(FusedKernels.TryCacheAppendAt(keys, values, cachePositions, k, v, positions, 7));
    }

    [Fact]
    public void LinearMapsUnderAutocastLeaveTheCastToTheComposite()
    {
        // fp32 weights under a bf16 autocast scope (training's mixed precision): the composite casts both operands to bf16; the
        // fused kernels (the own fp32 ones forced here for every host) must not serve the map in fp32 instead, at decode or
        // prefill sizes, through a layer, its residual form or a head.
        CpuKernels.OwnFp32Everywhere = true;
        try
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var linear = new Linear(Random(ScalarType.Float32, 45, 72), null);
            foreach (int rows in new[] { 1, 40 })
            {
                var x = Random(ScalarType.Float32, 1, rows, 72);
                var residual = Random(ScalarType.Float32, 1, rows, 45);
                Assert.True(FusedKernels.TryGemv(x, linear.Weight, null, null, out _)); // outside the scope the kernels serve
                using (Autocast.Enter(ScalarType.BFloat16))
                {
                    var expected = F.linear(x.to(ScalarType.BFloat16), linear.Weight.to(ScalarType.BFloat16));
                    Assert.Equal(expected.to(ScalarType.Float32).data<float>().ToArray(), linear.Forward(x).to(ScalarType.Float32).data<float>().ToArray());
                    Assert.Equal(expected.to(ScalarType.Float32).data<float>().ToArray(), Linear.Project(x, linear.Weight).to(ScalarType.Float32).data<float>().ToArray());
                    Assert.Equal((residual + expected).data<float>().ToArray(), linear.ForwardAdd(x, residual).data<float>().ToArray());
                }
            }
        }
        finally
        {
            CpuKernels.OwnFp32Everywhere = false;
        }
    }

    static string DefaultModel => Path.GetFullPath(Path.Combine(Fixtures.Root, "..", "..", "models", "default"));

    [Fact]
    public void TheDefaultModelGeneratesTheSameTokensWithAndWithoutThem()
    {
        using var model = CausalLanguageModel.Load(DefaultModel, new ModelLoadOptions { Device = DeviceKind.Cpu, DType = ModelDType.Float32 });
        var tokenizer = TernTokenizer.Load(DefaultModel);
        var options = new GenerationOptions { MaxNewTokens = 24 };
        string[] prompts = { "In the beginning", "The quick brown fox" };
        var fused = new Tern.Generation.Generator(model, tokenizer).Generate(prompts, options, TestContext.Current.CancellationToken);
        GenerationResult composite;
        using (FusedKernels.Suspend()) composite = new Tern.Generation.Generator(model, tokenizer).Generate(prompts, options, TestContext.Current.CancellationToken);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(composite.Sequences[i].Tokens, fused.Sequences[i].Tokens);
    }

    /// <summary>In bf16 the roundings differ (one bf16 linear for libtorch's oneDNN one), so greedy tokens may part at a near
    /// tie: the logits of every position stay within a few bf16 steps of the logit scale and pick the same token.</summary>
    [Fact]
    public void TheDefaultModelInBf16GivesTheSameLogitsWithinRounding()
    {
        using var model = CausalLanguageModel.Load(DefaultModel, new ModelLoadOptions { Device = DeviceKind.Cpu, DType = ModelDType.BFloat16 });
        var ids = TernTokenizer.Load(DefaultModel).Encode("In the beginning God created the heaven and the earth. And the earth was without form").ToArray();
        float[][] fused = model.Logits(ids), composite;
        using (FusedKernels.Suspend()) composite = model.Logits(ids);
        int agree = 0;
        double worst = 0, scale = 0;
        for (int t = 0; t < ids.Length; t++)
        {
            for (int v = 0; v < fused[t].Length; v++)
            {
                worst = Math.Max(worst, Math.Abs(fused[t][v] - composite[t][v]));
                scale = Math.Max(scale, Math.Abs(composite[t][v]));
            }
            if (Array.IndexOf(fused[t], fused[t].Max()) == Array.IndexOf(composite[t], composite[t].Max())) agree++;
        }
        Assert.True(worst <= scale / 16, $"largest logit difference {worst} at a logit scale of {scale}");
        Assert.True(agree >= ids.Length - 1, $"the top token agrees at {agree} of {ids.Length} positions");
    }
}
