using Google.OrTools.LinearSolver;

namespace Tern.Offloading;

/// <summary>What the policy search works with.</summary>
public sealed record PlanOptions
{
    /// <summary>The model and workload.</summary>
    public required OffloadWorkload Workload { get; init; }
    /// <summary>The machine's constants.</summary>
    public required HardwareProfile Hardware { get; init; }
    /// <summary>Memory each tier may use.</summary>
    public required MemoryCapacity Capacity { get; init; }
    /// <summary>Share of each capacity the policy may plan to fill (FlexGen's α_g = α_c = α_n = 0.8): room for fragmentation
    /// and what the model does not count.</summary>
    public double Headroom { get; init; } = 0.8;
    /// <summary>Weights 4-bit compressed.</summary>
    public bool CompressWeights { get; init; }
    /// <summary>Decode attention on the CPU where the cache lives (the engine then needs the whole cache on the CPU: c_c = 1).</summary>
    public bool CpuAttention { get; init; }
    /// <summary>The KV cache lives whole on one tier, the GPU (kv=100/0/0) or host memory (kv=0/100/0): what the engine needs
    /// to run a KV policy other than the plain full cache (<see cref="OffloadedModel.NeedsResidentCache"/>), whose size the
    /// workload's <see cref="OffloadWorkload.CacheTokens"/> gives. The search solves both placements and keeps the better.</summary>
    public bool WholeCache { get; init; }
    /// <summary>Largest GPU batch size tried.</summary>
    public int MaxGpuBatchSize { get; init; } = 1024;
}

/// <summary>The chosen policy and what the cost model predicts for it.</summary>
/// <param name="Candidates">(gbs, ngb) pairs whose LP was solved.</param>
public sealed record Plan(OffloadPolicy Policy, Prediction Prediction, int Candidates);

/// <summary>
/// FlexGen's two-level policy search (brief §1.1.6): for each GPU batch size (1, 2, 3, 4, 8, 16, …) find the largest feasible
/// number of GPU batches (double, then bisect), sweep ngb = 1 … max solving the LP over the nine fractions — minimise
/// T = T_pre·L + T_gen·(n − 1)·L subject to each tier's peak ≤ α·capacity, each placement summing to 1 and h_g + h_c = 1 (no
/// activations on disk, as FlexGen's optimizer) — keep the best throughput bls·n / T, stop the sweep when throughput drops
/// and stop growing gbs when even ngb = 1 is infeasible. The LP (GLOP, Google OR-Tools) is continuous; the result is rounded
/// to whole percent and re-checked against memory, moving GPU share to the CPU until it fits.
/// </summary>
public static class PolicySearch
{
    /// <summary>The best policy, or an error saying why none fits.</summary>
    public static Plan Find(PlanOptions options)
    {
        var model = new CostModel(options.Workload, options.Hardware, options.CompressWeights, options.CpuAttention);
        Plan? best = null;
        int candidates = 0;
        foreach (int gbs in BatchSizes(options.MaxGpuBatchSize))
        {
            if (Solve(model, options, gbs, 1) is null) break;
            int max = LargestNumGpuBatches(model, options, gbs);
            double previous = 0;
            for (int ngb = 1; ngb <= max; ngb++)
            {
                candidates++;
                if (Solve(model, options, gbs, ngb) is not { } policy) break;
                var prediction = model.Predict(policy);
                if (best is null || Better(prediction, gbs, best)) best = new Plan(policy, prediction, 0);
                if (prediction.TokensPerSecond < previous) break;
                previous = prediction.TokensPerSecond;
            }
        }
        if (best is null)
        {
            var w = options.Workload;
            throw new InvalidOperationException(
                $"no offloading policy fits: even one sequence of {w.Prompt} + {w.Generate} tokens needs more than {options.Headroom:P0} of the " +
                $"given memory (GPU {Units.Bytes(options.Capacity.Gpu)}, CPU {Units.Bytes(options.Capacity.Cpu)}, disk {Units.Bytes(options.Capacity.Disk)}) " +
                $"for {Units.Bytes(w.LayerWeightBytes * w.Layers)} of weights; allow more CPU or disk memory, shorten the prompt, or compress the weights.");
        }
        return best with { Candidates = candidates };
    }

    /// <summary>Higher predicted throughput wins; within 1% the larger GPU batch does: per-batch costs beyond the profile's
    /// <see cref="HardwareProfile.ItemOverhead"/> (0 in FlexGen's constants) would otherwise let the search split a block into
    /// many one-sequence batches.</summary>
    static bool Better(Prediction candidate, int gbs, Plan best) =>
        candidate.TokensPerSecond > best.Prediction.TokensPerSecond * 1.01
        || (candidate.TokensPerSecond >= best.Prediction.TokensPerSecond * 0.99 && gbs > best.Policy.GpuBatchSize);

    static IEnumerable<int> BatchSizes(int max)
    {
        foreach (int b in new[] { 1, 2, 3 }) if (b <= max) yield return b;
        for (int b = 4; b <= max; b *= 2) yield return b;
    }

    static int LargestNumGpuBatches(CostModel model, PlanOptions options, int gbs)
    {
        int low = 1, high = 2;
        while (high <= 4096 && Solve(model, options, gbs, high) is not null) (low, high) = (high, high * 2);
        if (high > 4096) return low;
        while (high - low > 1)
        {
            int mid = (low + high) / 2;
            if (Solve(model, options, gbs, mid) is not null) low = mid;
            else high = mid;
        }
        return low;
    }

    /// <summary>The LP for one (gbs, ngb), rounded to a feasible whole-percent policy; null when infeasible.</summary>
    internal static OffloadPolicy? Solve(CostModel model, PlanOptions options, int gbs, int ngb)
    {
        if (!options.WholeCache) return Solve(model, options, gbs, ngb, cacheTier: null);
        var placements = new[] { Solve(model, options, gbs, ngb, Tier.Gpu), Solve(model, options, gbs, ngb, Tier.Cpu) }.OfType<OffloadPolicy>();
        return placements.MaxBy(p => model.Predict(p).TokensPerSecond);
    }

    /// <param name="cacheTier">The one tier the whole cache must live on, or null for any split.</param>
    static OffloadPolicy? Solve(CostModel model, PlanOptions options, int gbs, int ngb, Tier? cacheTier)
    {
        var w = options.Workload;
        int bls = gbs * ngb;
        using var solver = CreateSolver();
        var p = Enumerable.Range(0, 9).Select(i => solver.MakeNumVar(0, 1, $"p{i}")).ToArray();
        var tPre = solver.MakeNumVar(0, double.PositiveInfinity, "T_pre");
        var tGen = solver.MakeNumVar(0, double.PositiveInfinity, "T_gen");
        foreach (int first in new[] { Lin.Wg, Lin.Cg, Lin.Hg })
        {
            var sum = solver.MakeConstraint(1, 1);
            for (int i = first; i < first + 3; i++) sum.SetCoefficient(p[i], 1);
        }
        p[Lin.Hd].SetUb(0); // h_g + h_c = 1, FlexGen's optimizer
        if (options.CpuAttention) p[Lin.Cc].SetLb(1); // Tern's CPU attention needs the whole cache in host memory
        if (cacheTier is { } tier) p[tier == Tier.Gpu ? Lin.Cg : Lin.Cc].SetLb(1);
        void AtLeast(Variable t, Lin bound)
        {
            // t ≥ bound  ⇔  bound.C·p − t ≤ −bound.K
            var c = solver.MakeConstraint(double.NegativeInfinity, -bound.K);
            for (int i = 0; i < 9; i++) c.SetCoefficient(p[i], bound.C[i]);
            c.SetCoefficient(t, -1);
        }
        void AtMost(Lin bytes, double capacity)
        {
            const double GiB = 1L << 30; // memory rows in GiB keep the LP well scaled
            var c = solver.MakeConstraint(double.NegativeInfinity, (options.Headroom * capacity - bytes.K) / GiB);
            for (int i = 0; i < 9; i++) c.SetCoefficient(p[i], bytes.C[i] / GiB);
        }
        foreach (var b in model.PrefillBounds(gbs, ngb)) AtLeast(tPre, b);
        foreach (var b in model.DecodeBounds(gbs, ngb)) AtLeast(tGen, b);
        foreach (var m in model.GpuPeaks(gbs, ngb)) AtMost(m, options.Capacity.Gpu);
        foreach (var m in model.CpuPeaks(gbs, ngb)) AtMost(m, options.Capacity.Cpu);
        AtMost(model.DiskPeak(gbs, ngb), options.Capacity.Disk);
        var objective = solver.Objective();
        objective.SetCoefficient(tPre, w.Layers);
        objective.SetCoefficient(tGen, (double)w.Layers * (w.Generate - 1));
        objective.SetMinimization();
        if (solver.Solve() != Solver.ResultStatus.OPTIMAL) return null;
        return Round(model, options, p.Select(v => v.SolutionValue()).ToArray(), gbs, ngb, cacheTier is not null);
    }

    static Solver CreateSolver()
    {
        try
        {
            return Solver.CreateSolver("GLOP") ?? throw new InvalidOperationException("Google OR-Tools' GLOP solver is not available.");
        }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException)
        {
            throw new InvalidOperationException(
                "the policy search needs Google OR-Tools' native libraries, which this install lacks (tools/gpu/pack.sh drops them): " +
                "run `tern offload plan` where they are and use the policy it prints.", e);
        }
    }

    /// <summary>Whole percents (largest remainder within each triple), then share moved one percent at a time down a tier
    /// (GPU → CPU while the GPU is over, else CPU → disk) until the rounded policy fits: the LP's optimum sits on a memory
    /// limit, which rounding may cross.</summary>
    static OffloadPolicy? Round(CostModel model, PlanOptions options, double[] p, int gbs, int ngb, bool cacheFixed)
    {
        int[] percent = new int[9];
        for (int first = 0; first < 9; first += 3)
        {
            var exact = Enumerable.Range(first, 3).Select(i => Math.Clamp(p[i], 0, 1) * 100).ToArray();
            var floor = exact.Select(x => (int)Math.Floor(x + 1e-6)).ToArray();
            foreach (int i in Enumerable.Range(0, 3).OrderByDescending(i => exact[i] - floor[i]).Take(100 - floor.Sum())) floor[i]++;
            floor.CopyTo(percent, first);
        }
        for (int attempt = 0; attempt <= 200; attempt++)
        {
            var policy = new OffloadPolicy
            {
                Weights = Triple(percent, 0), Cache = Triple(percent, 3), Activations = Triple(percent, 6),
                GpuBatchSize = gbs, NumGpuBatches = ngb, CompressWeights = options.CompressWeights, CpuAttention = options.CpuAttention,
            };
            var prediction = model.Predict(policy);
            var cap = options.Capacity;
            bool gpuOver = prediction.GpuPeakBytes > options.Headroom * cap.Gpu, cpuOver = prediction.CpuPeakBytes > options.Headroom * cap.Cpu;
            if (!gpuOver && !cpuOver && prediction.DiskPeakBytes <= options.Headroom * cap.Disk) return policy;
            // Move one percent down a tier (weights first, then cache; activations stay off the disk): GPU → CPU, else CPU → disk.
            int from = (gpuOver ? (cacheFixed ? new[] { 0, 6 } : new[] { 0, 3, 6 }) : options.CpuAttention || cacheFixed ? new[] { 1 } : new[] { 1, 4 })
                .FirstOrDefault(i => percent[i] > 0, -1);
            if (from < 0 || (!gpuOver && !cpuOver)) return null;
            percent[from]--;
            percent[from + 1]++;
        }
        return null;
    }

    static TierFractions Triple(int[] percent, int first) => new(percent[first] / 100.0, percent[first + 1] / 100.0, percent[first + 2] / 100.0);
}
