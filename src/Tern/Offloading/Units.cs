namespace Tern.Offloading;

/// <summary>Byte counts as people read them.</summary>
public static class Units
{
    /// <summary>"1.50 GiB", "12.0 MiB", "512 B".</summary>
    public static string Bytes(double bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (1L << 30):0.00} GiB",
        >= 1L << 20 => $"{bytes / (1L << 20):0.0} MiB",
        >= 1L << 10 => $"{bytes / (1L << 10):0.0} KiB",
        _ => $"{bytes:0} B",
    };

    /// <summary>Parses "16GB", "16GiB", "512MB", "100G", "1.5T" or a plain byte count (GB and G mean GiB, as FlexGen's sizes).</summary>
    public static long ParseBytes(string text, string field)
    {
        string t = text.Trim().ToUpperInvariant().Replace("IB", "B");
        (string suffix, long scale)[] units = { ("TB", 1L << 40), ("GB", 1L << 30), ("MB", 1L << 20), ("KB", 1L << 10), ("T", 1L << 40), ("G", 1L << 30), ("M", 1L << 20), ("K", 1L << 10), ("B", 1) };
        foreach (var (suffix, scale) in units)
            if (t.EndsWith(suffix, StringComparison.Ordinal) &&
                double.TryParse(t[..^suffix.Length], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v) && v >= 0)
                return (long)(v * scale);
        if (long.TryParse(t, out long plain) && plain >= 0) return plain;
        throw new ArgumentException($"{field} '{text}' is not a size; use e.g. 16GB, 512MB or a byte count.");
    }
}
