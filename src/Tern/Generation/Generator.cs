using System.Diagnostics;
using System.Runtime.CompilerServices;
using Tern.Models;
using Tern.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Generation;

/// <summary>
/// Continues batches of prompts with a <see cref="CausalLanguageModel"/>: left-padded prefill, then one decode step per
/// token with the KV cache. Prompts of different lengths share the batch (padding is masked and positions count real tokens
/// only). The loop reads nothing back from the device unless a stopping rule or streaming needs it.
/// </summary>
public sealed class Generator
{
    readonly IStepModel model;
    readonly TernTokenizer? tokenizer;

    /// <summary>A generator for <paramref name="model"/> (in memory, or offloaded); the tokenizer is needed for text prompts,
    /// stop strings and text outputs.</summary>
    public Generator(IStepModel model, TernTokenizer? tokenizer = null)
    {
        this.model = model;
        this.tokenizer = tokenizer;
    }

    /// <summary>Tokenizes text prompts (with the tokenizer's special tokens) and continues them.</summary>
    public GenerationResult Generate(IReadOnlyList<string> prompts, GenerationOptions options, CancellationToken cancellation = default) =>
        GenerateTokens(Tokenize(prompts), options, cancellation);

    /// <summary>Continues token prompts.</summary>
    public GenerationResult GenerateTokens(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions options, CancellationToken cancellation = default)
    {
        var run = new Run(this, prompts, options, streaming: false);
        foreach (var _ in run.Steps(cancellation)) { }
        return run.Result();
    }

    /// <summary>Streams tokens as they are produced; sequences of a batch interleave, one token each per step.</summary>
    public async IAsyncEnumerable<GeneratedToken> StreamAsync(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions options,
        [EnumeratorCancellation] CancellationToken cancellation = default)
    {
        var run = new Run(this, prompts, options, streaming: true);
        foreach (var tokens in run.Steps(cancellation))
        {
            foreach (var t in tokens!) yield return t;
            await Task.Yield(); // let the consumer's continuation (e.g. console output) run between steps
        }
    }

    /// <summary>Streams the continuation of text prompts.</summary>
    public IAsyncEnumerable<GeneratedToken> StreamAsync(IReadOnlyList<string> prompts, GenerationOptions options, CancellationToken cancellation = default) =>
        StreamAsync(Tokenize(prompts), options, cancellation);

    IReadOnlyList<IReadOnlyList<int>> Tokenize(IReadOnlyList<string> prompts)
    {
        var tok = tokenizer ?? throw new InvalidOperationException("text prompts need a tokenizer: create the Generator with one.");
        for (int i = 0; i < prompts.Count; i++)
            if (string.IsNullOrEmpty(prompts[i]))
                throw new ArgumentException($"prompt {i} of the batch is empty; every prompt needs at least one character.");
        return prompts.Select(p => tok.Encode(p, addSpecialTokens: true)).ToArray();
    }

    /// <summary>The state of one generate call.</summary>
    sealed class Run
    {
        readonly Generator owner;
        readonly IReadOnlyList<IReadOnlyList<int>> prompts;
        readonly GenerationOptions options;
        readonly bool streaming;
        readonly int batch, promptLength, maxNew;
        readonly HashSet<int> stopIds;
        readonly SequenceProgress[] progress;
        readonly Stopwatch prefillWatch = new(), decodeWatch = new();
        GraphSteps? graphSteps;
        int steps;
        Tensor? deviceTokens; // [batch, steps] when the host never looked
        readonly List<Tensor>? keptLogits; // with OutputLogits: each step's, fp32 on the CPU

        public Run(Generator owner, IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions options, bool streaming)
        {
            options.Validate();
            this.owner = owner;
            this.prompts = prompts;
            this.options = options;
            this.streaming = streaming;
            batch = prompts.Count;
            if (batch == 0) throw new ArgumentException("the batch holds no prompt.");
            for (int i = 0; i < batch; i++)
                if (prompts[i].Count == 0) throw new ArgumentException($"prompt {i} of the batch has no tokens; every prompt needs at least one.");
            var info = owner.model.Info;
            foreach (var p in prompts)
                foreach (int id in p)
                    if (id < 0 || id >= info.VocabSize)
                        throw new ArgumentException($"token id {id} is outside the model's vocabulary of {info.VocabSize}.");
            promptLength = prompts.Max(p => p.Count);
            if (promptLength >= info.MaxPositions)
                throw new ArgumentException(
                    $"the prompt has {promptLength} tokens but the model's context is {info.MaxPositions} (max_position_embeddings in config.json); shorten the prompt.");
            maxNew = options.NewTokensFor(info, promptLength);
            recompute = WindowRecompute.For(options.RecomputeWindow, promptLength + maxNew);
            stopIds = SequenceProgress.StopIds(options, owner.tokenizer, owner.model);
            keptLogits = options.OutputLogits ? new List<Tensor>() : null;
            bool needsText = streaming || options.StopStrings.Count > 0;
            progress = Enumerable.Range(0, batch).Select(_ => new SequenceProgress(
                needsText ? owner.tokenizer?.CreateStreamingDecoder() : null, options.StopStrings, stopIds)).ToArray();
        }

        bool HostNeedsTokens => streaming || stopIds.Count > 0 || options.StopStrings.Count > 0 || recompute is not null || options.Logprobs is not null;

        /// <summary>Set when some step re-runs a window of tokens (the host then keeps every token fed).</summary>
        readonly WindowRecompute? recompute;

        /// <summary>Runs the loop; yields once per decode step (with the new tokens when streaming).</summary>
        public IEnumerable<List<GeneratedToken>?> Steps(CancellationToken cancellation)
        {
            var model = owner.model;
            var device = model.Device;
            using var scope = torch.NewDisposeScope();
            const int padId = 0;
            var realLengths = prompts.Select(p => p.Count).ToArray();
            var prefill = ForwardBatch.LeftPadded(prompts, device, padId, lastPositionOnly: true);
            var chunks = options.PrefillChunk > 0 && options.PrefillChunk < promptLength ? prefill.Chunks(options.PrefillChunk).ToArray() : new[] { prefill };
            using var runner = model.CreateRunner(batch, promptLength + maxNew, chunks.Max(c => (int)c.InputIds.size(1)), options.Cache);
            var fed = recompute is not null ? prompts.Select(p => p.ToList()).ToArray() : null; // every token each sequence has fed
            using var sampler = new Sampler(options, prefill.InputIds, prefill.Positions.ge(0), model.Info.VocabSize, stopIds, maxNew);
            if (options.PromptLogprobs is { } top)
                for (int b = 0; b < batch; b++) progress[b].PromptLogprobs = TokenLogprob.ScorePrompt(model, prompts[b], top);

            prefillWatch.Start();
            Tensor logits;
            if (recompute?.Applies(promptLength) == true) logits = recompute.Run(runner, device, fed!);
            else
            {
                logits = runner.Forward(chunks[0]);
                foreach (var chunk in chunks.Skip(1))
                {
                    logits.Dispose(); // only the last chunk's logits are sampled
                    logits = runner.Forward(chunk);
                }
            }
            var next = sampler.Next(Keep(logits));
            if (!HostNeedsTokens) deviceTokens = torch.empty(batch, maxNew, ScalarType.Int64, device);
            SyncIfCuda(device);
            prefillWatch.Stop();

            var stepPositions = torch.tensor(realLengths.Select(n => (long)n).ToArray(), new long[] { batch, 1 }).to(device);
            var ones = Enumerable.Repeat(1, batch).ToArray();
            using var graphDecoder = keptLogits is null && CudaGraphDecoder.CanServe(runner, device, options)
                ? new CudaGraphDecoder(runner, sampler, next, stepPositions, padId) : null;
            int finishedCount = 0;
            decodeWatch.Start();
            for (int step = 0; ; step++)
            {
                cancellation.ThrowIfCancellationRequested();
                steps = step + 1;
                List<GeneratedToken>? produced = null;
                if (deviceTokens is not null)
                    deviceTokens.narrow(1, step, 1).copy_(next.unsqueeze(1));
                else
                {
                    long[] host = next.cpu().data<long>().ToArray(); // the one sync per step that stopping or streaming needs
                    produced = Record(host, lastStep: step + 1 >= maxNew, sampler);
                }
                bool done = step + 1 >= maxNew || progress.All(p => p.Finished is not null);
                if (produced is not null) yield return produced;
                if (done) break;

                using var stepScope = torch.NewDisposeScope();
                int nowFinished = progress.Count(p => p.Finished is not null);
                if (graphDecoder is not null)
                {
                    if (nowFinished != finishedCount) graphDecoder.SetFinished(progress.Select(p => p.Finished is not null).ToArray());
                    var previous = next;
                    next = graphDecoder.Step().MoveToOuterDisposeScope();
                    previous.Dispose(); // one step's tokens at a time, however long the generation
                }
                else
                {
                    if (nowFinished > 0)
                    {
                        var finishedMask = torch.tensor(progress.Select(p => p.Finished is not null).ToArray()).to(device);
                        next = torch.where(finishedMask, torch.tensor((long)padId, device: device), next);
                    }
                    if (fed is not null)
                    {
                        long[] host = next.cpu().data<long>().ToArray();
                        for (int b = 0; b < batch; b++) fed[b].Add((int)host[b]);
                    }
                    var stepLogits = recompute?.Applies(promptLength + step + 1) == true
                        ? recompute.Run(runner, device, fed!)
                        : runner.Forward(new ForwardBatch
                    {
                        InputIds = next.unsqueeze(1),
                        Positions = stepPositions,
                        RealTokens = ones,
                        MaxPosition = promptLength + step,
                        LastPositionOnly = true,
                    });
                    var (previous, previousPositions) = (next, stepPositions);
                    next = sampler.Next(Keep(stepLogits)).MoveToOuterDisposeScope();
                    stepPositions = (stepPositions + 1).MoveToOuterDisposeScope();
                    previous.Dispose(); // one step's tensors at a time, however long the generation
                    previousPositions.Dispose();
                }
                finishedCount = nowFinished;
                if (produced is null && step % 64 == 63) yield return null; // a cancellation point for non-streaming runs
            }
            if (deviceTokens is not null)
            {
                long[] all = deviceTokens.narrow(1, 0, steps).cpu().data<long>().ToArray();
                for (int b = 0; b < batch; b++)
                    for (int s = 0; s < steps; s++) progress[b].Tokens.Add((int)all[b * steps + s]);
            }
            SyncIfCuda(device);
            decodeWatch.Stop();
            graphSteps = graphDecoder?.Counts;
            deviceTokens = null;
        }

        Tensor Keep(Tensor logits)
        {
            keptLogits?.Add(logits.to(ScalarType.Float32).cpu().DetachFromDisposeScope());
            return logits;
        }

        List<GeneratedToken> Record(long[] host, bool lastStep, Sampler sampler)
        {
            var produced = new List<GeneratedToken>(batch);
            for (int b = 0; b < batch; b++)
            {
                var logprob = options.Logprobs is null ? null : sampler.TakeLogprob(b); // every row drew, finished or not
                if (progress[b].Finished is null)
                    produced.Add(new GeneratedToken(b, (int)host[b], progress[b].Push((int)host[b], lastStep, logprob), logprob));
            }
            return produced;
        }

        static void SyncIfCuda(Device device)
        {
            if (device.type == DeviceType.CUDA) torch.cuda.synchronize();
        }

        public GenerationResult Result()
        {
            var outputs = Enumerable.Range(0, batch).Select(b => progress[b].Output(prompts[b], owner.tokenizer)).ToArray();
            int generated = progress.Sum(p => p.Tokens.Count);
            var stats = new GenerationStats(batch, prompts.Sum(p => p.Count), generated, Math.Max(steps - 1, 0),
                prefillWatch.Elapsed, decodeWatch.Elapsed, graphSteps);
            return new GenerationResult(outputs, stats, keptLogits);
        }
    }
}
