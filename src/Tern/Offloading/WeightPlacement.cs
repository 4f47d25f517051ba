namespace Tern.Offloading;

/// <summary>
/// Places whole weight tensors on tiers so that the bytes on each tier follow the policy's (w_g, w_c, w_d).
/// </summary>
/// <remarks>
/// Deliberate deviation from FlexGen (brief §1.1.3, §1.6): FlexGen puts tensor i of a layer on the tier whose share of the
/// layer's cumulative bytes contains the tensor's midpoint, so <c>--percent 20 80</c> puts ≈1/12 of each block on the GPU, not
/// 20%, and the cost model (which reasons in bytes) mispredicts. Tern splits by bytes across the whole model: walking the
/// tensors in schedule order, each goes to the tier furthest below its target share of the bytes placed so far
/// (largest-deficit apportionment). Every prefix of layers then holds each tier's share within one tensor, so every layer
/// loads about the same number of bytes (the overlapped schedule is bound by its slowest layer) and the realised shares
/// match the LP's fractions to within one tensor of the whole model. Tensors stay whole, as in FlexGen.
/// </remarks>
public static class WeightPlacement
{
    /// <summary>The tier of each tensor, given their byte sizes in schedule order.</summary>
    public static Tier[] Assign(IReadOnlyList<long> bytes, TierFractions shares)
    {
        var tiers = new Tier[bytes.Count];
        var placed = new double[3];
        double total = 0;
        for (int i = 0; i < bytes.Count; i++)
        {
            total += bytes[i];
            Tier best = Tier.Gpu;
            double bestDeficit = double.NegativeInfinity;
            foreach (Tier t in new[] { Tier.Gpu, Tier.Cpu, Tier.Disk })
            {
                if (shares[t] <= 0) continue;
                double deficit = shares[t] * total - placed[(int)t];
                if (deficit > bestDeficit + 1e-9) (best, bestDeficit) = (t, deficit);
            }
            tiers[i] = best;
            placed[(int)best] += bytes[i];
        }
        return tiers;
    }
}
