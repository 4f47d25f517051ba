using Tern.Generation;
using Tern.Interop;
using Tern.Models;
using Tern.Runtime;
using Tern.Sparsity;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Gpu;

/// <summary>DejaVu's gather-GEMV kernels (Kernels/sparse.cu) and head-subset decode attention against the dense maths, and a
/// sparse model on CUDA (kernels, head subset, transposed down-projections) against the same selections on the CPU's
/// composite path.</summary>
public sealed class SparseKernelTests
{
    public SparseKernelTests() => ComputeOptions.ResolveDevice(DeviceKind.Cuda);

    static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<ModelDType> DTypes => new() { ModelDType.Float32, ModelDType.BFloat16, ModelDType.Float16 };

    /// <summary>|actual − expected| ≤ rel·(|expected| + 1), rel = roundings of the element type (fp32: a tight 1e-5).</summary>
    static void AssertClose(Tensor expected, Tensor actual, ModelDType dtype, string what, int roundings = 1)
    {
        using var scope = torch.NewDisposeScope();
        var e = expected.to(ScalarType.Float32).cpu();
        var a = actual.to(ScalarType.Float32).cpu();
        Assert.Equal(e.shape, a.shape);
        double rel = roundings * (dtype == ModelDType.Float32 ? 1e-5 : dtype == ModelDType.BFloat16 ? 1.0 / 64 : 1.0 / 512);
        var excess = ((a - e).abs() - (e.abs() * rel + rel)).max().item<float>();
        Assert.True(excess <= 0, $"{what} {dtype}: max |Δ| exceeds the bound by {excess}");
    }

    // k distinct indices below n per token, ascending, int64 [tokens, 1, k] on the GPU.
    static Tensor Selection(int tokens, long n, int k) => torch.stack(Enumerable.Range(0, tokens)
        .Select(_ => torch.randperm(n, ScalarType.Int64).narrow(0, 0, k).sort().Values).ToArray()).view(tokens, 1, k).to(CUDA);

    /// <summary>The selection kernel keeps the k largest scores of each row in ascending index order and, of scores equal to
    /// the k-th largest, the lowest indices: against a stable descending sort on the host, on distinct scores and on rows of
    /// many ties (seven values), for the OPT-30B MLP's 28,672 neurons, a head count, k = 1, k = all and the largest row the
    /// kernel takes; a longer row and fp32 scores are left to topk + sort. (Under no_grad: with autograd on the kernels step
    /// aside.)</summary>
    [Theory]
    [InlineData(ModelDType.BFloat16)]
    [InlineData(ModelDType.Float16)]
    public void TopKAscendingKeepsTheLargestScoresInIndexOrder(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        foreach (var (units, k, ties) in new[] { (28672, 2867, false), (28672, 2867, true), (56, 28, false), (56, 1, true), (1000, 1000, true),
                     (37, 5, false), (FusedKernels.LargestSelection, 3000, false) })
        {
            var scores = (ties ? torch.randint(0, 7, new long[] { 3, 2, units }).to(ScalarType.Float32) - 3 : torch.randn(3, 2, units)).to(t);
            Assert.True(FusedKernels.TryTopKAscending(scores.to(CUDA), k, out var kept), FusedKernels.SelectUnavailableReason ?? FusedKernels.UnavailableReason);
            Assert.Equal(new long[] { 3, 2, k }, kept.shape);
            var host = scores.to(ScalarType.Float32).view(-1, units);
            var actual = kept.cpu().view(-1, k);
            for (int r = 0; r < host.size(0); r++)
            {
                var values = host[r].data<float>().ToArray();
                var expected = Enumerable.Range(0, units).OrderByDescending(i => values[i]).ThenBy(i => i).Take(k).Order().Select(i => (long)i);
                Assert.Equal(expected, actual[r].data<long>().ToArray());
            }
        }
        Assert.False(FusedKernels.TryTopKAscending(torch.randn(1, FusedKernels.LargestSelection + 1, device: CUDA).to(t), 10, out _));
        Assert.False(FusedKernels.TryTopKAscending(torch.randn(1, 1000, device: CUDA), 10, out _)); // fp32
    }

    /// <summary>Selected rows with bias, with ReLU, and gated (relu(gate)·up of rows r and r + n): against the dense product's
    /// selected outputs in fp32. Two tokens, each with its own rows.</summary>
    [Theory]
    [MemberData(nameof(DTypes))]
    public void GatherRowsMatchesTheDenseProduct(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        int n = 3000, hidden = 1024, k = 301;
        var x = torch.randn(2, 1, hidden, device: CUDA).to(t);
        var w = (torch.randn(2 * n, hidden, device: CUDA) * 0.05).to(t);
        var b = torch.randn(2 * n, device: CUDA).to(t);
        var rows = Selection(2, n, k);
        var dense = (x.to(ScalarType.Float32).matmul(w.to(ScalarType.Float32).t()) + b.to(ScalarType.Float32)).to(t); // [2,1,2n]

        Assert.True(FusedKernels.TryGatherRows(x, w, b, rows, -1, 0, out var plain));
        AssertClose(dense.gather(-1, rows), plain, dtype, "rows");
        Assert.True(FusedKernels.TryGatherRows(x, w, b, rows, 1, 0, out var relu));
        AssertClose(dense.gather(-1, rows).relu(), relu, dtype, "relu rows");
        Assert.True(FusedKernels.TryGatherRows(x, w, b, rows, 1, n, out var gated));
        AssertClose(dense.gather(-1, rows).relu() * dense.gather(-1, rows + n), gated, dtype, "gated rows", roundings: 2);
        Assert.False(FusedKernels.TryGatherRows(x, w, b, rows.to(ScalarType.Int32), -1, 0, out _)); // int64 selections only
    }

    /// <summary>A predictor's copy on CUDA stores its factors transposed and runs a one-row step through the fused GEMV (no
    /// cuBLAS call: the kernel serves 16-bit types at inner sizes that are multiples of 8): its logits against the CPU original's
    /// (x·A)·B in fp32, the intermediate rounded once as the GEMV rounds it.</summary>
    [Theory]
    [InlineData(ModelDType.BFloat16)]
    [InlineData(ModelDType.Float16)]
    public void PredictorLogitsOnCudaMatchTheCpuProducts(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        int hidden = 1024, rank = 584, outputs = 4096;
        using var cpu = new LowRankPredictor((torch.randn(hidden, rank) / 32).to(t).DetachFromDisposeScope(),
            (torch.randn(rank, outputs) / 24).to(t).DetachFromDisposeScope());
        using var gpu = cpu.To(CUDA);
        Assert.False(gpu.A.is_contiguous()); // views of Aᵀ and Bᵀ
        Assert.True(gpu.A.t().is_contiguous() && gpu.B.t().is_contiguous());
        var x = torch.randn(1, 1, hidden).to(t);
        var inner = x.to(ScalarType.Float32).matmul(cpu.A.to(ScalarType.Float32)).to(t);
        var expected = inner.to(ScalarType.Float32).matmul(cpu.B.to(ScalarType.Float32)).to(t);
        AssertClose(expected, gpu.Logits(x.to(CUDA)), dtype, "predictor logits", roundings: 2);
    }

    /// <summary>Selected columns of a down-projection stored transposed (one contiguous row of Wᵀ per neuron), with bias and
    /// residual: residual + a·W[:, cols]ᵀ + b, against the dense product with the other inputs zero. The row-major layout of the
    /// same weight is refused for single columns (the composite path serves it).</summary>
    [Theory]
    [MemberData(nameof(DTypes))]
    public void GatherColumnsOfATransposedWeightMatchTheDenseProduct(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        int hidden = 1024, n = 4000, k = 333; // k not a multiple of the 32-column split
        var w = (torch.randn(hidden, n, device: CUDA) * 0.05).to(t);
        var transposed = w.t().contiguous().t();
        Assert.True(FusedKernels.StoredTransposed(transposed));
        var b = torch.randn(hidden, device: CUDA).to(t);
        var residual = torch.randn(2, 1, hidden, device: CUDA).to(t);
        var cols = Selection(2, n, k);
        var a = torch.randn(2, 1, k, device: CUDA).to(t);
        var full = torch.zeros(2, 1, n, device: CUDA).scatter_(-1, cols, a.to(ScalarType.Float32));
        var reference = residual.to(ScalarType.Float32) + (full.matmul(w.to(ScalarType.Float32).t()) + b.to(ScalarType.Float32)).to(t).to(ScalarType.Float32);

        Assert.True(FusedKernels.TryGatherColumnsAdd(a, transposed, b, cols, residual, 1, out var y));
        AssertClose(reference, y, dtype, "transposed columns", roundings: 2);
        Assert.False(FusedKernels.TryGatherColumnsAdd(a, w, b, cols, residual, 1, out _));
    }

    /// <summary>The output projection over kept heads: columns in runs of head_dim read in place from the row-major W_out,
    /// against the dense product with the skipped heads' outputs zero.</summary>
    [Theory]
    [MemberData(nameof(DTypes))]
    public void GatherColumnRunsMatchTheDenseProduct(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        int heads = 28, d = 128, hidden = 1536, kept = 14;
        var w = (torch.randn(hidden, heads * d, device: CUDA) * 0.05).to(t);
        var b = torch.randn(hidden, device: CUDA).to(t);
        var residual = torch.randn(2, 1, hidden, device: CUDA).to(t);
        var selected = Selection(2, heads, kept);
        var cols = (selected.unsqueeze(-1) * d + torch.arange(d, ScalarType.Int64, CUDA)).flatten(2); // [2,1,kept·d]
        var a = torch.randn(2, 1, kept * d, device: CUDA).to(t);
        var full = torch.zeros(2, 1, heads * d, device: CUDA).scatter_(-1, cols, a.to(ScalarType.Float32));
        var reference = residual.to(ScalarType.Float32) + (full.matmul(w.to(ScalarType.Float32).t()) + b.to(ScalarType.Float32)).to(t).to(ScalarType.Float32);

        Assert.True(FusedKernels.TryGatherColumnsAdd(a, w, b, cols, residual, d, out var y));
        AssertClose(reference, y, dtype, "head column runs", roundings: 2);
        var bare = new Linear(w, null).ForwardColumnsAdd(a, cols, residual, d); // through Linear, no bias
        AssertClose(residual.to(ScalarType.Float32) + full.matmul(w.to(ScalarType.Float32).t()).to(t).to(ScalarType.Float32), bare, dtype, "Linear", roundings: 2);
    }

    /// <summary>Decode attention of kept query heads only (GQA: each reads its own KV head) equals those heads' rows of the
    /// full decode attention.</summary>
    [Theory]
    [MemberData(nameof(DTypes))]
    public void DecodeAttentionOverKeptHeadsEqualsThoseHeadsOfTheFullAttention(ModelDType dtype)
    {
        using var scope = torch.NewDisposeScope();
        using var inference = torch.no_grad();
        var t = dtype.ToScalarType();
        int b = 2, heads = 8, kvHeads = 2, cap = 130, d = 64, filled = 100, kept = 3;
        var (keys, values, pos, qpos) = FusedKernelTests.DecodeCache(t, b, kvHeads, cap, d, filled);
        var q = torch.randn(b, heads, 1, d, device: CUDA).to(t);
        Assert.True(FusedKernels.TryDecodeAttention(q, keys, values, pos, qpos, 0, 1.0 / Math.Sqrt(d), out var full));
        var selected = Selection(b, heads, kept).view(b, kept);
        var keptQ = q.gather(1, selected.view(b, kept, 1, 1).expand(b, kept, 1, d));
        Assert.True(FusedKernels.TryDecodeAttention(keptQ, keys, values, pos, qpos, 0, 1.0 / Math.Sqrt(d), out var subset, selected, heads / kvHeads));
        var expected = full.view(b, heads, d).gather(1, selected.view(b, kept, 1).expand(b, kept, d)).reshape(b, 1, kept * d);
        AssertClose(expected, subset, dtype, "kept heads");
    }

    /// <summary>
    /// A sparse model on CUDA — gather-GEMV MLP over down-projections stored transposed, head-subset attention (kept heads'
    /// query rows, attention over them, their o_proj columns) — gives the CPU composite path's logits for the same random
    /// selections (a seeded CPU generator draws them on both), on a gated ReLU Llama and on OPT; dense again once sparsity is off.
    /// </summary>
    [Theory]
    [InlineData("llama-linear-relu-f16")]
    [InlineData("opt-prenorm")]
    public void SparseDecodeOnCudaEqualsTheCompositePath(string fixture)
    {
        var prompts = new[] { new[] { 5, 17, 42, 9, 3 }, new[] { 7, 7, 100, 2 } };
        var options = new SparsityOptions { Rule = SelectionRule.Random, MlpActive = 0.25, HeadsActive = 0.5, Seed = 3 };
        List<Tensor> Logits(DeviceKind device, bool sparse)
        {
            using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), new ModelLoadOptions { Device = device, DType = ModelDType.Float32 });
            using var sparsity = sparse ? DejaVuSparsity.Create(model, options) : null;
            model.Sparsity = sparsity;
            var result = new Tern.Generation.Generator(model).GenerateTokens(prompts,
                new GenerationOptions { MaxNewTokens = 6, IgnoreEos = true, OutputLogits = true }, Ct); // logits: eager steps
            model.Sparsity = null;
            return result.Logits!.Select(l => l.cpu()).ToList();
        }
        var composite = Logits(DeviceKind.Cpu, sparse: true);
        var cuda = Logits(DeviceKind.Cuda, sparse: true);
        for (int i = 0; i < composite.Count; i++)
            Assert.True(composite[i].allclose(cuda[i], rtol: 1e-4, atol: 1e-4), $"step {i}: max |Δ| {(composite[i] - cuda[i]).abs().max().item<float>()}");
        var dense = Logits(DeviceKind.Cuda, sparse: false);
        Assert.False(dense[1].allclose(cuda[1], rtol: 1e-4, atol: 1e-4), "the sparse decode steps differ from the dense ones");
    }

    /// <summary>The same in a static-shape decode step (what a CUDA graph captures: the fused decode attention over the kept
    /// heads, every preallocated slot masked), against the CPU's composite static step.</summary>
    [Theory]
    [InlineData("llama-linear-relu-f16")]
    [InlineData("opt-prenorm")]
    public void StaticShapeSparseStepOnCudaEqualsTheCompositePath(string fixture)
    {
        long[] prompt = { 5, 17, 42, 9, 3 };
        var options = new SparsityOptions { Rule = SelectionRule.Random, MlpActive = 0.25, HeadsActive = 0.5, Seed = 4 };
        Tensor Decode(DeviceKind device)
        {
            using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), new ModelLoadOptions { Device = device, DType = ModelDType.Float32 });
            using var sparsity = DejaVuSparsity.Create(model, options);
            model.Sparsity = sparsity;
            var on = model.Device;
            ForwardBatch Step(long[] ids, int start) => new()
            {
                InputIds = torch.tensor(ids, new long[] { 1, ids.Length }).to(on),
                Positions = torch.arange(start, start + ids.Length, ScalarType.Int64).unsqueeze(0).to(on),
                RealTokens = new[] { ids.Length },
                MaxPosition = start + ids.Length - 1,
                LastPositionOnly = true,
            };
            using var cache = model.CreateCache(1, 16, maxStepTokens: prompt.Length);
            model.Forward(Step(prompt, 0), cache).Dispose();
            var logits = model.Forward(Step(new long[] { 11 }, prompt.Length).WithWriteSlots(torch.tensor(new long[] { cache.Length }).to(on)), cache).cpu();
            model.Sparsity = null;
            return logits;
        }
        using var composite = Decode(DeviceKind.Cpu);
        using var cuda = Decode(DeviceKind.Cuda);
        Assert.True(composite.allclose(cuda, rtol: 1e-4, atol: 1e-4), $"max |Δ| {(composite - cuda).abs().max().item<float>()}");
    }

    /// <summary>Lookahead predictors forked onto the side stream (the default on CUDA) choose what they choose in the step's order:
    /// logits of eager steps and greedy tokens of graph-replayed steps equal to those with the overlap off, bit for bit, on a
    /// gated ReLU Llama and on OPT (untrained predictors of the default ranks: deterministic choices).</summary>
    [Theory]
    [InlineData("llama-linear-relu-f16")]
    [InlineData("opt-prenorm")]
    public void PredictorsOnTheSideStreamGiveTheInOrderResults(string fixture)
    {
        var prompts = new[] { new[] { 5, 17, 42, 9, 3 }, new[] { 7, 7, 100, 2 } };
        (List<Tensor> Logits, List<int[]> Eager, List<int[]> Graphs) Run(bool overlap)
        {
            using var model = CausalLanguageModel.Load(Fixtures.ModelDir(fixture), new ModelLoadOptions { Device = DeviceKind.Cuda, DType = ModelDType.Float32 });
            using var sparsity = DejaVuSparsity.ForTiming(model, new SparsityOptions { MlpActive = 0.25, HeadsActive = 0.5, OverlapPredictors = overlap }, seed: 5);
            model.Sparsity = sparsity;
            var generator = new Tern.Generation.Generator(model);
            var eager = generator.GenerateTokens(prompts, new GenerationOptions { MaxNewTokens = 8, IgnoreEos = true, OutputLogits = true }, Ct);
            Assert.Equal(overlap, sparsity.OverlapsPredictors);
            var graphs = generator.GenerateTokens(prompts, new GenerationOptions { MaxNewTokens = 8, IgnoreEos = true }, Ct);
            model.Sparsity = null;
            return (eager.Logits!.Select(l => l.cpu()).ToList(), eager.Sequences.Select(s => s.Tokens.ToArray()).ToList(),
                graphs.Sequences.Select(s => s.Tokens.ToArray()).ToList());
        }
        var inOrder = Run(overlap: false);
        var overlapped = Run(overlap: true);
        for (int i = 0; i < inOrder.Logits.Count; i++)
            Assert.True(inOrder.Logits[i].eq(overlapped.Logits[i]).all().item<bool>(), $"step {i}: max |Δ| {(inOrder.Logits[i] - overlapped.Logits[i]).abs().max().item<float>()}");
        Assert.Equal(inOrder.Eager, overlapped.Eager);
        Assert.Equal(inOrder.Eager, overlapped.Graphs);
        Assert.Equal(inOrder.Graphs, overlapped.Graphs);
    }
}
