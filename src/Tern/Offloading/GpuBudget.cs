namespace Tern.Offloading;

/// <summary>
/// Tern's own cap on the bytes it places on the compute device (<see cref="OffloadOptions.GpuMemoryLimit"/>): each placement
/// reserves its bytes under a name before allocating, and a reservation past the cap fails with an error that says what
/// took the room. It counts what the engine places (resident weights, the GPU share of the KV cache and activations, working
/// buffers), not libtorch's temporaries or allocator slack, which the policy search leaves room for (α = 0.8).
/// </summary>
internal sealed class GpuBudget(long? limit)
{
    readonly Dictionary<string, long> reservations = new();

    /// <summary>Bytes reserved now.</summary>
    public long Used => reservations.Values.Sum();

    /// <summary>The most bytes reserved at once.</summary>
    public long Peak { get; private set; }

    /// <summary>Reserves <paramref name="bytes"/> for <paramref name="what"/> (<paramref name="detail"/> says of what).</summary>
    public void Reserve(string what, long bytes, string? detail = null)
    {
        long after = Used + bytes;
        if (limit is { } cap && after > cap)
            throw new InvalidOperationException(
                $"offloading: {what} needs {Units.Bytes(bytes)} on the GPU{(detail is null ? "" : $" ({detail})")}, which with the " +
                $"{Units.Bytes(Used)} already placed passes the GPU memory limit of {Units.Bytes(cap)}; lower the policy's GPU shares or the GPU batch size, or let the policy search pick one.");
        reservations[what] = reservations.GetValueOrDefault(what) + bytes;
        Peak = Math.Max(Peak, Used);
    }

    /// <summary>Releases everything reserved under <paramref name="what"/>.</summary>
    public void Release(string what) => reservations.Remove(what);
}
