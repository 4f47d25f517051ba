using TorchSharp;
using static TorchSharp.torch;
using Tern.Interop;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Generation;

/// <summary>
/// Turns next-token logits [batch, vocab] into token ids on the device, in transformers' order: repetition penalty, then
/// temperature, top-k, top-p, then arg-max or a multinomial draw. Tokens already seen are tracked as a device mask. A
/// <see cref="GenerationOptions.Constraint"/> masks each row's logits before the draw (its state then follows the drawn tokens,
/// read back each step); <see cref="GenerationOptions.Logprobs"/> records each row's raw logprobs, taken with
/// <see cref="TakeLogprob"/>. The one step path of <see cref="Generator"/> and the serving engine.
/// </summary>
internal sealed class Sampler : IDisposable
{
    readonly GenerationOptions options;
    readonly torch.Generator? generator;
    readonly Tensor? seen; // [batch, vocab] bool: tokens present in prompt or output (repetition penalty)
    readonly ITokenMask[]? masks; // per row, with a constraint
    readonly Queue<TokenLogprob>[]? logprobs; // per row, drawn and not yet taken (an overlapped step draws ahead)
    readonly int vocab, maxNew;
    int drawn; // draws so far: the constraint's budget is maxNew − drawn

    /// <param name="stopIds">The tokens that end a sequence (a constraint allows them once its rule is satisfied).</param>
    /// <param name="maxNew">The tokens each row may produce (a constraint finishes within them where it can).</param>
    public Sampler(GenerationOptions options, Tensor promptIds, Tensor promptMask, int vocab, IReadOnlyCollection<int>? stopIds = null, int maxNew = int.MaxValue)
    {
        this.options = options;
        this.vocab = vocab;
        this.maxNew = maxNew;
        int rows = (int)promptIds.size(0);
        masks = options.Constraint is { } constraint ? Enumerable.Range(0, rows).Select(_ => constraint.Start(stopIds ?? Array.Empty<int>(), vocab)).ToArray() : null;
        logprobs = options.Logprobs is not null ? Enumerable.Range(0, rows).Select(_ => new Queue<TokenLogprob>()).ToArray() : null;
        if (Samples)
        {
            long seed = Mix(options.Seed ?? Random.Shared.NextInt64());
            // TorchSharp 0.107 creates CPU generators only; on CUDA the device's default generator is seeded instead.
            if (promptIds.device_type == DeviceType.CUDA) torch.cuda.manual_seed(seed);
            else generator = new torch.Generator((ulong)seed, promptIds.device);
        }
        if (options.RepetitionPenalty != 1.0)
        {
            using var counts = torch.zeros(promptIds.size(0), vocab, ScalarType.Int64, promptIds.device);
            counts.scatter_add_(1, promptIds, promptMask.to(ScalarType.Int64));
            seen = counts.gt(0).DetachFromDisposeScope(); // owned by the sampler, whatever scope is open
        }
    }

    /// <summary>libtorch's CPU generator (mt19937) keeps the low 32 bits of its seed: seeds that differ only above them drew
    /// the same tokens. SplitMix64's finaliser spreads every bit of the seed over the low ones first.</summary>
    static long Mix(long seed)
    {
        ulong z = unchecked((ulong)seed + 0x9E3779B97F4A7C15UL);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return unchecked((long)(z ^ (z >> 31)));
    }

    /// <summary>True when the next token is the arg-max of the logits and nothing else is recorded (temperature 0, no
    /// repetition penalty, constraint or logprobs).</summary>
    public bool IsPlainGreedy => !Samples && seen is null && masks is null && logprobs is null;

    /// <summary>Row <paramref name="row"/>'s logprob of its oldest draw not yet taken (with <see cref="GenerationOptions.Logprobs"/>).</summary>
    public TokenLogprob TakeLogprob(int row) => logprobs![row].Dequeue();

    /// <summary>True when tokens are drawn: a temperature that is not 0 in the fp32 the scores are computed in (a smaller one,
    /// such as 1e-45, is the arg-max, its limit).</summary>
    bool Samples => (float)options.Temperature > 0;

    /// <summary>Token ids [batch] (int64) drawn from fp32 scores: penalised and masked as asked, then the arg-max or a draw.</summary>
    Tensor Draw(Tensor logits)
    {
        var scores = logits.to(ScalarType.Float32);
        if (seen is not null)
        {
            double p = options.RepetitionPenalty;
            scores = torch.where(seen, torch.where(scores.lt(0), scores * p, scores / p), scores);
            scores = scores.clamp(float.MinValue, float.MaxValue); // a tiny penalty (1e-38) overflows to ±inf
        }
        if (masks is not null && Allowed(scores.device) is { } allowed) scores = scores.masked_fill(allowed.logical_not(), double.NegativeInfinity);
        if (!Samples) return scores.argmax(-1);
        // Shifted by the row maximum first: a tiny temperature (1e-38) then drives every other score to −inf instead of
        // overflowing the best one to +inf (inf − inf is NaN in softmax), so the draw tends to the arg-max as it should.
        scores = (scores - scores.amax(new long[] { -1 }, keepdim: true)) / options.Temperature;
        if (options.TopK > 0 && options.TopK < scores.size(1))
        {
            var kth = scores.topk(options.TopK).values.narrow(1, options.TopK - 1, 1);
            scores = scores.masked_fill(scores.lt(kth), double.NegativeInfinity);
        }
        if (options.TopP < 1.0)
        {
            var (sorted, indices) = scores.sort(-1, descending: false);
            var cumulative = F.softmax(sorted, -1).cumsum(-1);
            var remove = cumulative.le(1 - options.TopP);
            remove.narrow(1, remove.size(1) - 1, 1).fill_(false); // always keep the most likely token
            scores = scores.masked_fill(remove.scatter(1, indices, remove), double.NegativeInfinity);
        }
        return torch.multinomial(F.softmax(scores, -1), 1, generator: generator).squeeze(1);
    }

    /// <summary>Token ids [batch] (int64).</summary>
    public Tensor Next(Tensor logits)
    {
        using var scope = torch.NewDisposeScope();
        // Plain greedy over the raw logits: widening them to fp32 is exact, so the arg-max is the same without the copy.
        Tensor next = !Samples && seen is null && masks is null && FusedKernels.TryArgMax(logits, out var fused) ? fused : Draw(logits);
        seen?.scatter_(1, next.unsqueeze(1), torch.ones(next.size(0), 1, ScalarType.Bool, next.device));
        if (logprobs is not null)
        {
            var drawnLogprobs = TokenLogprob.FromLogits(logits, next, options.Logprobs!.Value); // the raw logits: see TokenLogprob
            for (int b = 0; b < logprobs.Length; b++) logprobs[b].Enqueue(drawnLogprobs[b]);
        }
        if (masks is not null)
        {
            long[] host = next.cpu().data<long>().ToArray(); // the next mask depends on this token
            for (int b = 0; b < masks.Length; b++) masks[b].Accept((int)host[b]);
        }
        drawn++;
        return next.MoveToOuterDisposeScope();
    }

    /// <summary>The rows' allowed tokens, bool [rows, vocab], or null when every row allows any.</summary>
    Tensor? Allowed(Device device)
    {
        int left = Math.Max(1, maxNew - drawn);
        var rows = masks!.Select(m => m.Allowed(device, left)).ToArray();
        if (rows.All(r => r is null)) return null;
        Tensor? any = null;
        return torch.stack(rows.Select(r => r ?? (any ??= torch.ones(vocab, ScalarType.Bool, device))).ToArray());
    }

    public void Dispose()
    {
        seen?.Dispose();
        generator?.Dispose();
    }
}
