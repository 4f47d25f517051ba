using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>
/// One forward step's input: token ids [batch, tokens] and their positions [batch, tokens] (-1 marks left padding),
/// with host-side facts that spare the model device synchronisation.
/// </summary>
public sealed class ForwardBatch
{
    /// <summary>Token ids, int64 [batch, tokens], on the model's device.</summary>
    public required Tensor InputIds { get; init; }

    /// <summary>Original positions, int64 [batch, tokens], -1 for padding, on the model's device.</summary>
    public required Tensor Positions { get; init; }

    /// <summary>Real (non-padding) tokens of each sequence in this step.</summary>
    public required IReadOnlyList<int> RealTokens { get; init; }

    /// <summary>The positions the model embeds (rotary angles, learned-position rows), int64 [batch, tokens], -1 for padding:
    /// the original positions unless the cache positions tokens by their cache index
    /// (<see cref="Caching.KvCacheConfig.RollPositions"/>). Masks always use <see cref="Positions"/>.</summary>
    public Tensor ModelPositions { get => modelPositions ?? Positions; init => modelPositions = value; }
    readonly Tensor? modelPositions;

    /// <summary>An upper bound of <see cref="ModelPositions"/> known on the host (defaults to <see cref="MaxPosition"/>).</summary>
    public int MaxModelPosition { get => maxModelPosition ?? MaxPosition; init => maxModelPosition = value; }
    readonly int? maxModelPosition;

    /// <summary>True when any position is -1.</summary>
    public bool HasPadding { get; init; }

    /// <summary>Largest position in the batch (host-known), used to size rotary and position tables.</summary>
    public required int MaxPosition { get; init; }

    /// <summary>When true the model returns logits of the last position only, [batch, vocab]; else [batch, tokens, vocab].</summary>
    public bool LastPositionOnly { get; init; }

    /// <summary>
    /// Static-shape mode (CUDA-graph capture): the cache slot, int64 [tokens] on the device, where this step's entries go.
    /// The step then writes through an index held on the device and attends over the whole preallocated cache with a mask,
    /// so the same kernels with the same shapes serve every step.
    /// </summary>
    public Tensor? WriteSlots { get; init; }

    /// <summary>
    /// Input vectors [n, hidden] (a soft prompt) that replace the token embeddings of the first n positions of every row, in the
    /// token-embedding space (before learned positions or an input projection are applied); the ids there are placeholders.
    /// Only for steps without padding that start the sequences.
    /// </summary>
    public Tensor? PrefixEmbeddings { get; init; }

    /// <summary>This batch with the model positions given (everything else shared).</summary>
    internal ForwardBatch WithModelPositions(Tensor positions, int maxPosition) => new()
    {
        InputIds = InputIds, Positions = Positions, RealTokens = RealTokens, HasPadding = HasPadding, MaxPosition = MaxPosition,
        LastPositionOnly = LastPositionOnly, WriteSlots = WriteSlots, ModelPositions = positions, MaxModelPosition = maxPosition,
        PrefixEmbeddings = PrefixEmbeddings,
    };

    /// <summary>This batch writing at <paramref name="slots"/> (<see cref="WriteSlots"/>; everything else shared).</summary>
    internal ForwardBatch WithWriteSlots(Tensor slots) => new()
    {
        InputIds = InputIds, Positions = Positions, RealTokens = RealTokens, HasPadding = HasPadding, MaxPosition = MaxPosition,
        LastPositionOnly = LastPositionOnly, WriteSlots = slots, ModelPositions = ModelPositions, MaxModelPosition = MaxModelPosition,
        PrefixEmbeddings = PrefixEmbeddings,
    };

    /// <summary>Rows [<paramref name="start"/>, start + <paramref name="count"/>) of this batch (views; host bounds kept), writing
    /// at <paramref name="writeSlots"/> when given.</summary>
    internal ForwardBatch Rows(int start, int count, Tensor? writeSlots = null)
    {
        var real = RealTokens.Skip(start).Take(count).ToArray();
        long tokens = InputIds.size(1);
        return new ForwardBatch
        {
            InputIds = InputIds.narrow(0, start, count), Positions = Positions.narrow(0, start, count), RealTokens = real,
            HasPadding = HasPadding && real.Any(n => n < tokens), MaxPosition = MaxPosition, LastPositionOnly = LastPositionOnly,
            ModelPositions = ModelPositions.narrow(0, start, count), MaxModelPosition = MaxModelPosition, WriteSlots = writeSlots,
        };
    }

    /// <summary>
    /// A prefill batch of prompts of different lengths, left-padded to the longest with <paramref name="padId"/>: real tokens
    /// get positions 0, 1, … of their own sequence (from <paramref name="firstPosition"/> on, when entries such as a soft
    /// prompt's precede them in the cache), padding gets -1 (masked everywhere).
    /// </summary>
    public static ForwardBatch LeftPadded(IReadOnlyList<IReadOnlyList<int>> prompts, Device device, int padId = 0, bool lastPositionOnly = false,
        int firstPosition = 0)
    {
        int batch = prompts.Count, length = prompts.Max(p => p.Count);
        var ids = new long[batch * length];
        var positions = new long[batch * length];
        for (int b = 0; b < batch; b++)
        {
            int offset = length - prompts[b].Count;
            for (int t = 0; t < length; t++)
            {
                bool real = t >= offset;
                ids[b * length + t] = real ? prompts[b][t - offset] : padId;
                positions[b * length + t] = real ? firstPosition + t - offset : -1;
            }
        }
        return new ForwardBatch
        {
            InputIds = torch.tensor(ids, new long[] { batch, length }).to(device),
            Positions = torch.tensor(positions, new long[] { batch, length }).to(device),
            RealTokens = prompts.Select(p => p.Count).ToArray(),
            HasPadding = prompts.Any(p => p.Count < length),
            MaxPosition = firstPosition + length - 1,
            LastPositionOnly = lastPositionOnly,
        };
    }

    /// <summary>
    /// This left-padded prefill split into steps of at most <paramref name="size"/> columns, the first widened so that it
    /// holds a real token of every row (a row of only padding would attend to nothing).
    /// </summary>
    public IEnumerable<ForwardBatch> Chunks(int size)
    {
        int length = (int)InputIds.size(1);
        int[] padding = RealTokens.Select(n => length - n).ToArray();
        int first = Math.Min(length, Math.Max(size, padding.Max() + 1));
        for (int start = 0; start < length; start += start == 0 ? first : size)
        {
            int n = Math.Min(start == 0 ? first : size, length - start);
            yield return new ForwardBatch
            {
                InputIds = InputIds.narrow(1, start, n),
                Positions = Positions.narrow(1, start, n),
                RealTokens = padding.Select(p => Math.Max(0, start + n - Math.Max(start, p))).ToArray(),
                HasPadding = padding.Any(p => p > start),
                MaxPosition = MaxPosition - (length - start - n), // the whole's last column holds its largest position
                LastPositionOnly = LastPositionOnly, // only the last chunk's logits are used: skip the LM head elsewhere
            };
        }
    }
}
