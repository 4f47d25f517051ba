namespace Tern.Interop;

/// <summary>
/// The calling thread and one dedicated worker per other core, for the CPU kernels' work split into a part per core. The
/// thread pool is no substitute in a decode step: when its threads are busy elsewhere (a server's requests, a progress
/// timer), <c>Parallel.For</c> runs every part on the caller and the split gains nothing. Workers spin briefly between
/// steps (a decode step calls this a hundred times in milliseconds), then sleep. One run at a time; runs do not nest.
/// </summary>
internal sealed class CoreTeam
{
    /// <summary>One team for the process, sized to its cores.</summary>
    public static CoreTeam Shared => SharedTeam.Value;

    static readonly Lazy<CoreTeam> SharedTeam = new(() => new CoreTeam(Environment.ProcessorCount));

    readonly object gate = new();
    readonly ManualResetEventSlim[] start;
    int pending;
    Action<int>? work;
    Exception? failure;

    CoreTeam(int size)
    {
        Size = Math.Max(1, size);
        start = new ManualResetEventSlim[Size - 1];
        for (int w = 0; w < start.Length; w++)
        {
            start[w] = new ManualResetEventSlim(false, spinCount: 2000);
            int part = w + 1;
            new Thread(() => Work(part)) { IsBackground = true, Name = $"tern-core-{part}" }.Start();
        }
    }

    /// <summary>Threads in the team: the caller and the workers.</summary>
    public int Size { get; }

    /// <summary>Runs <paramref name="part"/>(0 … <see cref="Size"/> − 1), part 0 on the calling thread, and returns when every
    /// part has; an exception of any part is rethrown here.</summary>
    public void Run(Action<int> part)
    {
        if (Size == 1)
        {
            part(0);
            return;
        }
        lock (gate)
        {
            work = part;
            failure = null;
            Volatile.Write(ref pending, Size - 1);
            foreach (var signal in start) signal.Set();
            try
            {
                part(0);
            }
            finally
            {
                var spin = new SpinWait();
                while (Volatile.Read(ref pending) != 0) spin.SpinOnce(sleep1Threshold: -1);
                work = null;
            }
            if (failure is not null) throw new AggregateException(failure);
        }
    }

    /// <summary>Runs <paramref name="range"/>(from, to) over [0, <paramref name="count"/>) cut into chunks whose bounds are
    /// multiples of <paramref name="align"/> (the last chunk takes the rest), <see cref="ChunksPerThread"/> a thread, each thread
    /// taking the next chunk until none is left: a worker that starts late (woken, or its core briefly taken on a shared VM)
    /// leaves its chunks to the others instead of keeping the caller waiting for a fixed half (~30 µs a split on average, a
    /// sixth of the default model's batch-1 step, when each thread had one part).</summary>
    public void Split(long count, long align, Action<long, long> range)
    {
        long chunks = Size * ChunksPerThread, chunk = ((count + chunks - 1) / chunks + align - 1) / align * align;
        long next = 0; // captured: a field of the closure the threads share
        Run(_ =>
        {
            for (long from; (from = (Interlocked.Increment(ref next) - 1) * chunk) < count;)
                range(from, Math.Min(count, from + chunk));
        });
    }

    /// <summary>Chunks a thread's share of a <see cref="Split"/> is cut into: enough to even out a late start, few enough that
    /// each stays long next to taking it (a decode step's products: tens of microseconds a chunk).</summary>
    internal const int ChunksPerThread = 4;

    void Work(int part)
    {
        var signal = start[part - 1];
        while (true)
        {
            signal.Wait();
            signal.Reset();
            try
            {
                work!(part);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref failure, e, null);
            }
            Interlocked.Decrement(ref pending);
        }
    }
}
