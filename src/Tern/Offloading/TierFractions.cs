using System.Globalization;

namespace Tern.Offloading;

/// <summary>Shares of one kind of data on the GPU, CPU and disk tiers (fractions in [0, 1] summing to 1).</summary>
public sealed record TierFractions(double Gpu, double Cpu, double Disk)
{
    /// <summary>Everything on one tier.</summary>
    public static TierFractions All(Tier tier) => tier switch
    {
        Tier.Gpu => new(1, 0, 0),
        Tier.Cpu => new(0, 1, 0),
        _ => new(0, 0, 1),
    };

    /// <summary>The share of <paramref name="tier"/>.</summary>
    public double this[Tier tier] => tier switch { Tier.Gpu => Gpu, Tier.Cpu => Cpu, _ => Disk };

    /// <summary>
    /// How many of <paramref name="rows"/> whole sequences go to each tier, as FlexGen splits a mixed cache (§1.1.3): the GPU
    /// takes ⌊rows·g⌋; without a disk share the CPU takes the rest, else ⌊rows·c⌋ and the disk the remainder.
    /// Rounding down keeps the GPU (the scarce tier) within its share.
    /// </summary>
    public (int Gpu, int Cpu, int Disk) SplitRows(int rows)
    {
        int g = (int)Math.Floor(rows * Gpu + 1e-9);
        int c = Disk <= 0 ? rows - g : Math.Min(rows - g, (int)Math.Floor(rows * Cpu + 1e-9));
        return (g, c, rows - g - c);
    }

    internal void Validate(string field)
    {
        foreach (var (name, v) in new[] { ("GPU", Gpu), ("CPU", Cpu), ("disk", Disk) })
            if (double.IsNaN(v) || v < 0 || v > 1)
                throw new ArgumentException($"offload policy: {field}'s {name} share is {Percent(v)}%; each share must be between 0 and 100%.");
        if (Math.Abs(Gpu + Cpu + Disk - 1) > 1e-4)
            throw new ArgumentException($"offload policy: {field}={this} sums to {Percent(Gpu + Cpu + Disk)}%; GPU/CPU/disk shares must sum to 100%.");
    }

    internal static string Percent(double v) => (v * 100).ToString("0.##", CultureInfo.InvariantCulture);

    /// <summary>"G/C/D" in percent, the policy string's form.</summary>
    public override string ToString() => $"{Percent(Gpu)}/{Percent(Cpu)}/{Percent(Disk)}";
}
