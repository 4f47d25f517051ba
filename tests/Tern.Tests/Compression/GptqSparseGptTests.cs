using Tern.Compression;
using Tern.Models;
using Tern.Runtime;
using Tern.Tests.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Compression;

public sealed class GptqSparseGptTests
{
    /// <summary>A layer whose inputs are correlated (X = A·Z), so H is far from diagonal and error feedback matters.</summary>
    static (Tensor W, Tensor X, Tensor H) Layer(int rows, int columns, int samples, int seed)
    {
        var gen = new torch.Generator((ulong)seed);
        var w = torch.randn(new long[] { rows, columns }, ScalarType.Float64, generator: gen);
        var x = torch.randn(new long[] { columns, columns }, ScalarType.Float64, generator: gen)
            .matmul(torch.randn(new long[] { columns, samples }, ScalarType.Float64, generator: gen));
        var acc = new HessianAccumulator(columns);
        acc.Add(x.t());
        var h = acc.Hessian();
        acc.Dispose();
        return (w, x, h);
    }

    static double OutputError(Tensor w, Tensor q, Tensor x) => (w - q.to(ScalarType.Float64)).matmul(x).square().sum().item<double>();

    /// <summary>GPTQ as the OBQ paper writes it, with plain arrays: quantize column j, spread its error with the inverse
    /// Hessian of the columns left, δ = −(w_j − q_j)/[H⁻¹]_jj · H⁻¹_{j,:}, then remove j from the inverse,
    /// H⁻¹ ← H⁻¹ − H⁻¹_{:,j} H⁻¹_{j,:} / [H⁻¹]_jj. No Cholesky, no lazy batches.</summary>
    static double[,] DirectGptq(double[,] w, double[,] h, int bits, double damping, int[]? order)
    {
        int r = w.GetLength(0), c = w.GetLength(1);
        var p = order ?? Enumerable.Range(0, c).ToArray();
        var wp = new double[r, c];
        var hp = new double[c, c];
        for (int i = 0; i < r; i++) for (int j = 0; j < c; j++) wp[i, j] = w[i, p[j]];
        double mean = Enumerable.Range(0, c).Average(j => h[j, j]);
        for (int i = 0; i < c; i++) for (int j = 0; j < c; j++) hp[i, j] = h[p[i], p[j]] + (i == j ? damping * mean : 0);
        var inv = Invert(hp);
        // Per-row grid from the starting weights: step = (max − min) / (2^b − 1).
        var step = new double[r];
        var min = new double[r];
        for (int i = 0; i < r; i++)
        {
            double lo = double.MaxValue, hi = double.MinValue;
            for (int j = 0; j < c; j++) { lo = Math.Min(lo, wp[i, j]); hi = Math.Max(hi, wp[i, j]); }
            min[i] = lo;
            step[i] = (hi - lo) / ((1 << bits) - 1);
        }
        var q = new double[r, c];
        for (int j = 0; j < c; j++)
        {
            for (int i = 0; i < r; i++)
            {
                double code = Math.Clamp(Math.Round((wp[i, j] - min[i]) / step[i], MidpointRounding.ToEven), 0, (1 << bits) - 1);
                q[i, j] = code * step[i] + min[i];
                double e = (wp[i, j] - q[i, j]) / inv[j, j];
                for (int k = j + 1; k < c; k++) wp[i, k] -= e * inv[j, k];
            }
            var next = new double[c, c];
            for (int a = 0; a < c; a++) for (int b = 0; b < c; b++) next[a, b] = inv[a, b] - inv[a, j] * inv[j, b] / inv[j, j];
            inv = next;
        }
        var result = new double[r, c];
        for (int i = 0; i < r; i++) for (int j = 0; j < c; j++) result[i, p[j]] = q[i, j];
        return result;
    }

    static double[,] Invert(double[,] m)
    {
        int n = m.GetLength(0);
        var a = new double[n, 2 * n];
        for (int i = 0; i < n; i++) { for (int j = 0; j < n; j++) a[i, j] = m[i, j]; a[i, n + i] = 1; }
        for (int col = 0; col < n; col++)
        {
            int pivot = Enumerable.Range(col, n - col).MaxBy(i => Math.Abs(a[i, col]));
            for (int j = 0; j < 2 * n; j++) (a[col, j], a[pivot, j]) = (a[pivot, j], a[col, j]);
            double d = a[col, col];
            for (int j = 0; j < 2 * n; j++) a[col, j] /= d;
            for (int i = 0; i < n; i++)
                if (i != col)
                {
                    double f = a[i, col];
                    for (int j = 0; j < 2 * n; j++) a[i, j] -= f * a[col, j];
                }
        }
        var inv = new double[n, n];
        for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) inv[i, j] = a[i, n + j];
        return inv;
    }

    static double[,] ToArray(Tensor t)
    {
        var data = t.to(ScalarType.Float64).contiguous().data<double>().ToArray();
        int r = (int)t.shape[0], c = (int)t.shape[1];
        var a = new double[r, c];
        for (int i = 0; i < r; i++) for (int j = 0; j < c; j++) a[i, j] = data[i * c + j];
        return a;
    }

    [Theory]
    [InlineData(3, false)]
    [InlineData(2, true)]
    [InlineData(4, true)]
    public void GptqEqualsTheDirectUpdateEquations(int bits, bool actOrder)
    {
        using var scope = torch.NewDisposeScope();
        var (w, _, h) = Layer(6, 40, 200, seed: bits);
        // Block size 16: the lazy batch updates cross block boundaries twice.
        var result = Gptq.Quantize(w, h, new GptqOptions { Bits = bits, ActOrder = actOrder, BlockSize = 16 });
        int[]? order = actOrder ? h.diagonal().argsort(descending: true).data<long>().Select(x => (int)x).ToArray() : null;
        var direct = DirectGptq(ToArray(w), ToArray(h), bits, 0.01, order);
        var ours = ToArray(result.Weight);
        double worst = 0;
        for (int i = 0; i < 6; i++) for (int j = 0; j < 40; j++) worst = Math.Max(worst, Math.Abs(ours[i, j] - direct[i, j]));
        Assert.True(worst < 1e-9, $"GPTQ differs from the direct equations by {worst}");
    }

    [Theory]
    [InlineData(2, 0)]
    [InlineData(3, 0)]
    [InlineData(4, 0)]
    [InlineData(3, 16)]
    public void GptqOutputErrorIsBelowRoundToNearestAtEqualBits(int bits, int groupSize)
    {
        using var scope = torch.NewDisposeScope();
        var (w, x, h) = Layer(16, 64, 256, seed: 10 + bits);
        var gptq = Gptq.Quantize(w.to(ScalarType.Float32), h, new GptqOptions { Bits = bits, GroupSize = groupSize }).Weight;
        using var q = GroupQuantizer.Quantize(w.to(ScalarType.Float32), new GroupQuantizationOptions { Bits = bits, GroupSize = groupSize > 0 ? groupSize : 64, Dimension = 1 });
        var rtn = GroupQuantizer.Dequantize(q);
        double eGptq = OutputError(w, gptq, x), eRtn = OutputError(w, rtn, x);
        Assert.True(eGptq < 0.8 * eRtn, $"GPTQ ‖(W−Q)X‖² {eGptq:G4} is not clearly below RTN's {eRtn:G4}");
        Assert.Equal(ScalarType.Float32, gptq.dtype);
    }

    [Theory]
    [InlineData(0.5, 0)]
    [InlineData(0.75, 0)]
    [InlineData(0.5, 4)]
    public void SparseGptHitsTheRequestedSparsityExactlyAndBeatsMagnitudePruning(double sparsity, int bits)
    {
        using var scope = torch.NewDisposeScope();
        var (w, x, h) = Layer(16, 300, 512, seed: 21); // 300 columns: blocks of 128, 128 and 44
        var pruned = SparseGpt.Prune(w, h, new SparseGptOptions { Sparsity = sparsity, Bits = bits }).Weight;
        long zeros = pruned.eq(0).sum().item<long>();
        long expected = (long)(Math.Round(sparsity * 16 * 128) * 2 + Math.Round(sparsity * 16 * 44));
        Assert.Equal(expected, zeros);
        // Magnitude pruning at the same sparsity (per layer) must do worse in the layer's output.
        var magnitude = w.abs().flatten();
        var threshold = magnitude.sort().Values[(long)(sparsity * magnitude.shape[0])];
        var byMagnitude = w.masked_fill(w.abs().lt(threshold), 0.0);
        Assert.True(OutputError(w, pruned, x) < OutputError(w, byMagnitude, x), "SparseGPT is not below magnitude pruning");
    }

    [Fact]
    public void CompressedModelFolderLoadsAndRoundToNearestMatchesTheQuantizer()
    {
        using var dir = new TempDir();
        using var scope = torch.NewDisposeScope();
        var config = TrainerTests.TinyConfig(initRange: 0.2);
        var random = new Random(4);
        var calibration = Enumerable.Range(0, 2000).Select(_ => random.Next(TrainerTests.Vocab)).ToArray();
        foreach (var options in new[]
        {
            new CompressionOptions { Method = CompressionMethod.Rtn, Bits = 3 },
            new CompressionOptions { Method = CompressionMethod.Gptq, Bits = 3, CalibrationSamples = 6, CalibrationLength = 32 },
            new CompressionOptions { Method = CompressionMethod.SparseGpt, Sparsity = 0.5, Bits = 4, CalibrationSamples = 6, CalibrationLength = 32, TrueSequential = false },
        })
        {
            using var original = CausalLanguageModel.CreateRandom(config, torch.CPU, ModelDType.Float32, seed: 3);
            using var model = CausalLanguageModel.CreateRandom(config, torch.CPU, ModelDType.Float32, seed: 3);
            var report = ModelCompressor.Run(model, calibration, options, cancellation: TestContext.Current.CancellationToken);
            Assert.Equal(2 * 7, report.Tensors.Count); // q, k, v, o, gate, up, down per layer
            string folder = dir.File(options.Name);
            ModelCompressor.Save(model, dir.Path, folder, report, ModelDType.Float32);
            Assert.True(File.Exists(Path.Combine(folder, ModelCompressor.ManifestFile)));
            using var loaded = CausalLanguageModel.Load(folder, new ModelLoadOptions { Device = DeviceKind.Cpu, Trainable = true });
            var before = original.StateDict().ToDictionary(t => t.Name, t => t.Tensor);
            foreach (var (name, tensor) in loaded.StateDict())
            {
                bool compressed = report.Tensors.Any(t => t.Name == name);
                Assert.Equal(compressed, !tensor.allclose(before[name], 0, 0)); // embeddings, norms and the head stay as they were
                if (compressed && options.Method == CompressionMethod.Rtn)
                {
                    int columns = (int)tensor.shape[1];
                    using var q = GroupQuantizer.Quantize(before[name], new GroupQuantizationOptions { Bits = 3, GroupSize = columns + columns % 2, Dimension = 1 });
                    Assert.True(tensor.allclose(GroupQuantizer.Dequantize(q), 0, 0), $"{name} is not the quantizer's round trip");
                }
                if (compressed && options.Method == CompressionMethod.SparseGpt)
                    Assert.Equal(0.5, tensor.eq(0).to(ScalarType.Float64).mean().item<double>(), 6);
            }
        }
    }
}
