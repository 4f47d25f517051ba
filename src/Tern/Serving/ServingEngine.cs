using System.Threading.Channels;
using Tern.Generation;
using Tern.Caching;
using Tern.Interop;
using Tern.Models;
using Tern.Offloading;
using Tern.Prompting;
using Tern.Runtime;
using Tern.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Serving;

/// <summary>
/// Continuous batching: one model serves many requests. A scheduler on one dedicated thread admits waiting requests into
/// the running batch at step boundaries (their prompts are prefilled together and join), runs one decode step over every
/// running sequence, streams each new token to its request and lets finished or cancelled sequences leave, so throughput
/// grows with load instead of serialising requests.
/// </summary>
/// <remarks>
/// Requests with the same KV cache (the full 16-bit cache by default; sink, window, h2o, quantized, each with its budget
/// resolved for the request's own length) share one batch: a pool of cache rows that grows and shrinks with the load
/// (<see cref="KvCache.ActiveRows"/>; a finished row is refilled by the last one, holes are compacted away). Policies evict
/// per row, and per-entry state (H2O's scores) moves with its row, so a pooled sequence keeps what it would keep alone.
/// Each pool runs one forward pass per step, all pools every step. StreamingLLM's window re-computation is a per-sequence
/// evaluation baseline and is refused. Admission is first come, first served
/// under <see cref="ServingOptions.MaxBatchSize"/>, <see cref="ServingOptions.KvBudgetTokens"/> and
/// <see cref="ServingOptions.MaxPrefillTokensPerStep"/> (a longer prompt is prefilled in chunks, one per step, while the others
/// keep decoding); at most <see cref="ServingOptions.MaxQueue"/> requests wait. Greedy requests give the tokens
/// <see cref="Generator"/> gives. Each sequence samples through its own sampler (as the generator's rows do), which applies the
/// request's <see cref="GenerationOptions.Constraint"/> and records its <see cref="GenerationOptions.Logprobs"/>; a constrained
/// sequence reads its token back as it is drawn (its next mask depends on it), so on CUDA a step holding one waits for the
/// device before the next step is queued. A request with a soft prompt (<see cref="ServingOptions.SoftPrompts"/>) starts its
/// row from the prompt's entries, prefilled once per pool configuration (<see cref="PromptedModel"/>), and gives the tokens
/// <see cref="Generator"/> gives over that <see cref="PromptedModel"/>; an offloaded model's block holds the requests of one
/// soft prompt (or none), whose runner prefills it with the block.
/// </remarks>
public sealed class ServingEngine : IDisposable
{
    readonly IStepModel model;
    readonly CausalLanguageModel? inMemory; // pools of cache rows; null: an offloaded model, served in blocks
    readonly IReadOnlyDictionary<string, PromptedModel> softPrompts; // by name, owned
    StaticStep? together; // the static-shape step of the pools last stepped in one forward pass
    readonly Channel<ServingRequest> incoming = Channel.CreateUnbounded<ServingRequest>(new UnboundedChannelOptions { SingleReader = true });
    readonly CancellationTokenSource stopping = new();
    readonly Thread loop;
    readonly int budget, maxPrompt;
    readonly long bytesPerToken;
    readonly bool overlap; // ServingOptions.OverlapSteps resolved for the model's device
    readonly object tokenizerLock = new();
    int queued; // submitted, not yet admitted
    int outstanding; // submitted, not yet finished (however they end)
    volatile bool draining;
    volatile ServingStats stats = new(0, 0, 0, 0, 0, 0, 0, 0, 0);

    // Scheduler state, touched by the loop thread only.
    readonly List<ServingRequest> waiting = new();
    readonly Dictionary<KvCacheConfig, Batch> pools = new(); // by configuration value
    /// <summary>How long an idle pool keeps its cache and CUDA graph for the next requests of its configuration (requests that
    /// arrive in rounds would otherwise re-allocate and re-capture them every round).</summary>
    static readonly TimeSpan IdlePoolLifetime = TimeSpan.FromSeconds(1);
    IEnumerable<Batch> batches => pools.Values;
    long steps, generated, completed, cancelled, prefills, captures;
    double prefillSeconds;

    ServingEngine(IStepModel model, TernTokenizer? tokenizer, ServingOptions options, IReadOnlyDictionary<string, PromptedModel> softPrompts)
    {
        this.model = model;
        this.softPrompts = softPrompts;
        inMemory = model as CausalLanguageModel;
        Tokenizer = tokenizer;
        Options = options;
        var info = model.Info;
        maxPrompt = options.MaxPromptTokens > 0 ? Math.Min(options.MaxPromptTokens, info.MaxPositions - 1) : info.MaxPositions - 1;
        budget = options.KvBudgetTokens > 0 ? options.KvBudgetTokens : checked(options.MaxBatchSize * info.MaxPositions);
        bytesPerToken = info.KvBytesPerToken(model.DType.ElementSize());
        overlap = options.OverlapSteps ?? model.Device.type == DeviceType.CUDA;
        loop = new Thread(Run) { IsBackground = true, Name = "tern-serving" };
        loop.Start();
    }

    /// <summary>Starts an engine for <paramref name="model"/> (the caller keeps ownership of the model). The tokenizer is needed
    /// for text prompts, text outputs and stop strings.</summary>
    public static ServingEngine Start(IStepModel model, TernTokenizer? tokenizer, ServingOptions? options = null)
    {
        options ??= new ServingOptions();
        options.Validate();
        return new ServingEngine(model, tokenizer, options, PrefillSoftPrompts(model, options));
    }

    /// <summary>The soft prompts of <paramref name="options"/>: in memory each prefilled under the full cache (other
    /// configurations are prefilled when a pool of theirs first meets the prompt); offloaded, prefilled with each block.</summary>
    static Dictionary<string, PromptedModel> PrefillSoftPrompts(IStepModel model, ServingOptions options)
    {
        var prompts = new Dictionary<string, PromptedModel>();
        if (options.SoftPrompts is not { Count: > 0 } given) return prompts;
        try
        {
            foreach (var (name, prompt) in given)
                prompts[name] = model switch
                {
                    CausalLanguageModel inMemory => PromptedModel.Create(inMemory, prompt),
                    OffloadedModel offloaded => PromptedModel.Create(offloaded, prompt),
                    _ => throw new ArgumentException($"soft prompts run over a model in memory or an offloaded one, not a {model.GetType().Name}."),
                };
        }
        catch
        {
            foreach (var prompted in prompts.Values) prompted.Dispose();
            throw;
        }
        return prompts;
    }

    /// <summary>The names of the soft prompts served (<see cref="ServingOptions.SoftPrompts"/>) and their lengths in vectors.</summary>
    public IReadOnlyDictionary<string, int> SoftPrompts => softPrompts.ToDictionary(p => p.Key, p => p.Value.PromptLength);

    /// <summary>The limits.</summary>
    public ServingOptions Options { get; }

    /// <summary>The model served.</summary>
    public IStepModel Model => model;

    /// <summary>The tokenizer, or null.</summary>
    public TernTokenizer? Tokenizer { get; }

    /// <summary>Longest prompt accepted, in tokens, after the default soft prompt if there is one (a soft prompt of n vectors
    /// leaves at most the context minus n minus one).</summary>
    public int MaxPromptTokens => LongestPrompt(softPrompts.GetValueOrDefault(ServingOptions.DefaultSoftPrompt));

    int LongestPrompt(PromptedModel? soft) => Math.Min(maxPrompt, model.Info.MaxPositions - 1 - (soft?.PromptLength ?? 0));

    /// <summary>The load, as of the last step boundary.</summary>
    public ServingStats Stats => stats;

    /// <summary>Tokenizes <paramref name="text"/> (safe to call from any thread).</summary>
    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = true)
    {
        var tok = Tokenizer ?? throw new InvalidOperationException("text prompts need a tokenizer: start the engine with one.");
        lock (tokenizerLock) return tok.Encode(text, addSpecialTokens);
    }

    /// <summary>Renders a conversation with the tokenizer's chat template (ending where the assistant's reply starts) and
    /// tokenizes it, as <c>tern chat</c> does (safe to call from any thread). <paramref name="tools"/> (OpenAI's function tool
    /// objects) need a template that supports them: otherwise <see cref="NotSupportedException"/>.</summary>
    public IReadOnlyList<int> EncodeChat(IEnumerable<ChatMessage> messages, IReadOnlyList<System.Text.Json.JsonElement>? tools = null)
    {
        var tok = Tokenizer ?? throw new InvalidOperationException("chat prompts need a tokenizer: start the engine with one.");
        lock (tokenizerLock) return tok.Encode(ChatFormatter.Format(messages, addGenerationPrompt: true, tools), addSpecialTokens: false);
    }

    /// <summary>The tokenizer's chat template, as <see cref="EncodeChat"/> renders it (what a forced tool call writes depends on it).</summary>
    public ChatTemplate ChatTemplate => ChatFormatter.Template;

    ChatFormatter ChatFormatter => chatFormatter ??= (Tokenizer ?? throw new InvalidOperationException("chat prompts need a tokenizer: start the engine with one.")).CreateChatFormatter();
    ChatFormatter? chatFormatter;

    /// <summary>Queues a text prompt (tokenized with the tokenizer's special tokens).</summary>
    public ServingRequest Submit(string prompt, GenerationOptions options, CancellationToken cancellation = default) =>
        Submit(Encode(prompt), options, cancellation);

    /// <summary>Queues a token prompt after the default soft prompt, if the engine has one. Throws <see cref="ServingException"/>
    /// when it is invalid or past a limit, when the queue is full, or when the engine is stopping.</summary>
    public ServingRequest Submit(IReadOnlyList<int> prompt, GenerationOptions options, CancellationToken cancellation = default) =>
        Submit(prompt, options, null, cancellation);

    /// <summary>Queues a token prompt after the soft prompt named <paramref name="softPrompt"/> (null: the default one, if
    /// any; <see cref="ServingOptions.NoSoftPrompt"/>: none; see <see cref="ServingOptions.SoftPrompts"/>). Throws
    /// <see cref="ServingException"/> when it is invalid or past a limit, when the queue is full, or when the engine is stopping.</summary>
    public ServingRequest Submit(IReadOnlyList<int> prompt, GenerationOptions options, string? softPrompt, CancellationToken cancellation = default)
    {
        if (stopping.IsCancellationRequested || draining) throw new ServingException(ServingError.Unavailable, "the server is shutting down.");
        try
        {
            options.Validate();
        }
        catch (ArgumentException e)
        {
            throw new ServingException(ServingError.InvalidRequest, e.Message, inner: e);
        }
        var info = model.Info;
        var soft = softPrompt switch
        {
            null => softPrompts.GetValueOrDefault(ServingOptions.DefaultSoftPrompt),
            ServingOptions.NoSoftPrompt => null, // opted out of the default prompt
            _ => softPrompts.TryGetValue(softPrompt, out var named) ? named
                : throw Invalid(softPrompts.Count == 0 ? $"this server has no soft prompts (asked for '{softPrompt}')."
                    : $"this server has no soft prompt '{softPrompt}'; a request names one of {string.Join(", ", softPrompts.Keys.Where(k => k.Length > 0).Append(ServingOptions.NoSoftPrompt).Select(k => $"'{k}'"))}.", "soft_prompt"),
        };
        int n = soft?.PromptLength ?? 0, longest = LongestPrompt(soft);
        if (prompt.Count == 0) throw Invalid("the prompt has no tokens; it needs at least one.", "prompt");
        if (prompt.Count > longest)
            throw Invalid($"the prompt has {prompt.Count} tokens; this server accepts at most {longest} (the model's context is {info.MaxPositions}{(n > 0 ? $", of which the soft prompt takes {n}" : "")}).", "prompt");
        foreach (int id in prompt)
            if (id < 0 || id >= info.VocabSize) throw Invalid($"token id {id} is outside the model's vocabulary of {info.VocabSize}.", "prompt");
        if (options.MaxNewTokens > Options.MaxNewTokens)
            throw Invalid($"max_tokens is {options.MaxNewTokens}; this server allows at most {Options.MaxNewTokens}.", "max_tokens");
        if (options.StopStrings.Count > 0 && Tokenizer is null) throw Invalid("stop strings need a tokenizer.", "stop");
        if (options.RecomputeWindow is not null)
        {
            var refused = new OptionException($"{TernOption.KvPolicy} window-recompute re-runs a window of each sequence at every step, an evaluation baseline that a shared batch cannot serve; use sink or window.");
            throw Invalid(refused.Message, "kv_policy", refused);
        }
        var cache = options.Cache ?? KvCacheConfig.Full;
        try
        {
            inMemory?.RequireCache(cache);
        }
        catch (OptionException e)
        {
            // The field that chose the cache: its bits, or its policy.
            throw Invalid(e.Message, e.Option == TernOption.KvBits || cache.Eviction is DensePolicy ? "kv_bits" : "kv_policy", e);
        }
        // A soft prompt's entries are the row's first: they take context, and their share of the cache is reserved.
        int maxNew = options.NewTokensFor(soft?.Info ?? info, prompt.Count);
        int reserved, length = prompt.Count + maxNew;
        try
        {
            cache = soft?.Resolve(cache, length) ?? cache.ForSequenceLength(length);
            reserved = cache.Eviction.Capacity(n + length, prompt.Count);
        }
        catch (ArgumentException e)
        {
            throw Invalid(e.Message, "kv_budget", e);
        }
        if (reserved > budget)
            throw Invalid($"the request needs {reserved} KV-cache tokens (prompt + max_tokens) but the server's budget is {budget}; lower max_tokens.", "max_tokens");
        // Requests the next step boundary will admit do not count against the queue.
        if (Interlocked.Increment(ref queued) > Options.MaxQueue + Math.Max(0, Options.MaxBatchSize - stats.Running))
        {
            Interlocked.Decrement(ref queued);
            throw new ServingException(ServingError.Overloaded, $"the server is busy: {Options.MaxQueue} requests are already waiting; retry later.");
        }
        var request = new ServingRequest(prompt, options, soft, cache, maxNew, reserved, cancellation);
        Interlocked.Increment(ref outstanding);
        if (!incoming.Writer.TryWrite(request))
        {
            Interlocked.Decrement(ref queued);
            Interlocked.Decrement(ref outstanding);
            throw new ServingException(ServingError.Unavailable, "the server is shutting down.");
        }
        request.Completion.ContinueWith(_ => Interlocked.Decrement(ref outstanding), TaskScheduler.Default);
        return request;
    }

    static ServingException Invalid(string message, string field, Exception? inner = null) => new(ServingError.InvalidRequest, message, field, inner);

    /// <summary>
    /// A graceful stop's first half: from now on <see cref="Submit(IReadOnlyList{int}, GenerationOptions, CancellationToken)"/>
    /// refuses (unavailable), and the returned task completes once every request already submitted has finished, or after
    /// <paramref name="deadline"/> (or when <paramref name="cancellation"/> fires), whichever comes first; true when all
    /// finished. <see cref="Dispose"/> then ends whatever is left with <see cref="ServingException"/> (unavailable).
    /// </summary>
    public async Task<bool> DrainAsync(TimeSpan deadline, CancellationToken cancellation = default)
    {
        draining = true;
        var until = DateTime.UtcNow + deadline;
        while (Volatile.Read(ref outstanding) > 0 && DateTime.UtcNow < until && !cancellation.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(TimeSpan.FromMilliseconds(20), cancellation);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
        return Volatile.Read(ref outstanding) == 0;
    }

    /// <summary>Requests submitted and not yet finished.</summary>
    public int Outstanding => Volatile.Read(ref outstanding);

    /// <summary>Stops the scheduler; requests still running or waiting end with <see cref="ServingException"/> (unavailable).</summary>
    public void Dispose()
    {
        if (stopping.IsCancellationRequested) return;
        incoming.Writer.TryComplete();
        stopping.Cancel();
        loop.Join();
        stopping.Dispose();
        foreach (var prompted in softPrompts.Values) prompted.Dispose();
    }

    // ------------------------------------------------------------------ the scheduler (loop thread)

    void Run()
    {
        try
        {
            while (!stopping.IsCancellationRequested)
            {
                if (!batches.Any(b => b.Busy) && waiting.Count == 0 && !WaitForWork()) break;
                try
                {
                    Iterate();
                }
                catch (Exception e)
                {
                    // A bug or a device failure outside a step: the running requests end with it, the loop goes on.
                    foreach (var batch in batches) batch.Abandon(e);
                }
                Publish();
            }
        }
        finally
        {
            // However the loop ends, nothing is left waiting and nothing new is accepted.
            incoming.Writer.TryComplete();
            var stopped = new ServingException(ServingError.Unavailable, "the server stopped before the request finished.");
            while (incoming.Reader.TryRead(out var request)) waiting.Add(request);
            foreach (var request in waiting) request.Fail(stopped);
            waiting.Clear();
            foreach (var batch in batches) batch.Abandon(stopped);
            together?.Dispose();
            together = null;
            Publish();
        }
    }

    /// <summary>Static-shape steps (CUDA graphs, or forced) serve this pool cache: the engine asks for them and its entries are
    /// 16-bit.</summary>
    bool StaticShapesServe(KvCache cache) =>
        (Options.ForceStaticShapes || Options.UseCudaGraphs && StepGraph.CanCapture(cache.Options.Device)) && StepGraph.Serves(cache);

    /// <summary>A pool's cache goes away (released or resized): the step of several pools captured over it goes with it.</summary>
    void Forget(KvCache cache)
    {
        if (together is null || !together.Caches.Contains(cache)) return;
        together.Dispose();
        together = null;
    }

    /// <summary>One step boundary: take new requests, drop cancelled ones, admit, step every batch, fit the pool.</summary>
    void Iterate()
    {
        while (incoming.Reader.TryRead(out var request)) waiting.Add(request);
        DropCancelled();
        Admit();
        var busy = batches.Where(b => b.Busy).ToArray();
        var pooled = busy.OfType<DecodeBatch>().ToArray();
        if (Options.StepPoolsTogether && pooled.Length > 1) DecodeBatch.StepTogether(pooled);
        foreach (var batch in Options.StepPoolsTogether && pooled.Length > 1 ? busy.Except(pooled) : busy) batch.Step();
        foreach (var batch in batches) batch.Fit();
        var now = DateTime.UtcNow;
        foreach (var (config, pool) in pools.ToArray())
        {
            if (pool.Busy) pool.IdleSince = null;
            else if ((pool.IdleSince ??= now) + IdlePoolLifetime <= now)
            {
                pool.Dispose();
                pools.Remove(config);
            }
        }
    }

    /// <summary>Waits for a request (true) or for the engine to stop (false); wakes up meanwhile (true) when an idle pool's
    /// lifetime ends, so that the next boundary releases it.</summary>
    bool WaitForWork()
    {
        var expiry = pools.Values.Min(p => p.IdleSince + IdlePoolLifetime);
        using var wake = CancellationTokenSource.CreateLinkedTokenSource(stopping.Token);
        if (expiry is { } at) wake.CancelAfter(TimeSpan.FromMilliseconds(Math.Max(1, (at - DateTime.UtcNow).TotalMilliseconds)));
        try
        {
            return incoming.Reader.WaitToReadAsync(wake.Token).AsTask().GetAwaiter().GetResult();
        }
        catch (OperationCanceledException)
        {
            return !stopping.IsCancellationRequested;
        }
    }

    void DropCancelled()
    {
        foreach (var request in waiting.Where(r => r.Cancellation.IsCancellationRequested).ToArray())
        {
            waiting.Remove(request);
            Interlocked.Decrement(ref queued);
            cancelled++;
            request.Fail(new OperationCanceledException(request.Cancellation));
        }
        foreach (var batch in batches)
            foreach (var s in batch.All.Where(s => s.Request.Cancellation.IsCancellationRequested).ToArray())
            {
                cancelled++;
                batch.Leave(s, new OperationCanceledException(s.Request.Cancellation));
            }
    }

    /// <summary>First come, first served: admits waiting requests while a slot, the KV budget and the step's prefill budget
    /// allow (and, for a pool, while no long prompt is being prefilled into it in chunks; for a model stepped in blocks, when
    /// the last block has ended, the requests of one cache configuration at the head of the queue).</summary>
    void Admit()
    {
        // A model without row pools runs one block at a time (FlexGen's schedule holds the whole device), prefilled at once.
        bool blocks = inMemory is null;
        if (blocks && batches.Any(b => b.Busy)) return;
        int running = batches.Sum(b => b.All.Count());
        long reserved = batches.Sum(b => b.All.Sum(s => (long)s.Request.ReservedTokens));
        int prefill = 0;
        var joiners = new List<ServingRequest>();
        foreach (var request in waiting)
        {
            if (running + joiners.Count >= Options.MaxBatchSize || reserved + request.ReservedTokens > budget) break;
            if (pools.TryGetValue(request.Cache, out var pool) && !pool.Admits) break;
            // A block's rows share one cache configuration and one soft prompt (or none): every row starts from its entries.
            if (blocks && joiners.Count > 0 && (!request.Cache.Equals(joiners[0].Cache) || request.SoftPrompt != joiners[0].SoftPrompt)) break;
            if (!blocks && joiners.Count > 0 && prefill + request.PromptTokens.Count > Options.MaxPrefillTokensPerStep) break;
            joiners.Add(request);
            reserved += request.ReservedTokens;
            prefill += request.PromptTokens.Count;
        }
        if (joiners.Count == 0) return;
        waiting.RemoveRange(0, joiners.Count);
        Interlocked.Add(ref queued, -joiners.Count);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        foreach (var group in joiners.GroupBy(r => r.Cache))
        {
            if (!pools.TryGetValue(group.Key, out var pool))
                pools[group.Key] = pool = inMemory is null ? new BlockBatch(this, group.Key) : new DecodeBatch(this, inMemory, group.Key);
            pool.Join(group.ToArray());
            prefills++;
        }
        prefillSeconds += watch.Elapsed.TotalSeconds;
    }

    void Publish()
    {
        var running = batches.SelectMany(b => b.All).ToArray();
        stats = new ServingStats(running.Length, Volatile.Read(ref queued),
            running.Sum(s => (long)s.Request.ReservedTokens), batches.Sum(b => b.LiveTokens) * bytesPerToken,
            batches.Sum(b => b.AllocatedBytes), steps, generated, completed, cancelled,
            Options.MeasureKvCache ? batches.Sum(b => b.OccupiedEntries()) * bytesPerToken / (model.Info.Layers * model.Info.KvHeads) : -1,
            batches.Count(b => b.Busy), prefills, prefillSeconds, captures);
    }

    /// <summary>One running sequence: its request, sampler and stopping state, and the token it feeds next.</summary>
    sealed class Sequence(ServingRequest request, SequenceProgress progress, Sampler sampler) : IDisposable
    {
        public ServingRequest Request { get; } = request;
        public SequenceProgress Progress { get; } = progress;
        public Sampler Sampler { get; } = sampler;
        /// <summary>Tokens fed to the model so far: the position of the next one.</summary>
        public int Fed { get; set; }
        /// <summary>The token fed at the next step (batches stepped in blocks; pools keep it on the device).</summary>
        public int Next { get; set; }
        /// <summary>True once the sequence has finished or failed: tokens still in flight for it are dropped.</summary>
        public bool Left { get; set; }
        /// <summary>Tokens generated and fed back so far.</summary>
        public int FedBack => Fed - Request.PrefilledTokens;
        /// <summary>True while a decode step would produce a token the request still wants (the prefill gave the first).</summary>
        public bool WantsStep => FedBack + 1 < Request.MaxNewTokens;
        public void Dispose() => Sampler.Dispose();
    }

    /// <summary>Sequences of one KV cache configuration stepped together: what the scheduler admits into, steps and drops from.</summary>
    abstract class Batch(ServingEngine engine) : IDisposable
    {
        protected ServingEngine Engine => engine;

        /// <summary>True while the batch has work.</summary>
        public abstract bool Busy { get; }
        /// <summary>When the batch last stopped having work (null while busy): the engine releases it after a while.</summary>
        public DateTime? IdleSince { get; set; }
        /// <summary>True when joiners may be admitted at this step boundary.</summary>
        public abstract bool Admits { get; }
        /// <summary>The sequences still running (and one being prefilled).</summary>
        public abstract IEnumerable<Sequence> All { get; }
        public abstract long LiveTokens { get; }
        public abstract long AllocatedBytes { get; }
        /// <summary>Occupied entries over every row, layer and KV head, counted on the device.</summary>
        public abstract long OccupiedEntries();
        public abstract void Join(IReadOnlyList<ServingRequest> requests);
        /// <summary>One decode step over every sequence of the batch.</summary>
        public abstract void Step();
        /// <summary>Removes a sequence (finished when <paramref name="error"/> is null).</summary>
        public abstract void Leave(Sequence s, Exception? error);
        /// <summary>Ends every sequence with <paramref name="error"/> and releases the batch's state (it is not trusted).</summary>
        public abstract void Abandon(Exception error);
        /// <summary>Sizes the batch's memory for its load (pools only).</summary>
        public virtual void Fit() { }
        public abstract void Dispose();

        protected Sequence Begin(ServingRequest request)
        {
            var stopIds = SequenceProgress.StopIds(request.Options, engine.Tokenizer, engine.model);
            var progress = new SequenceProgress(engine.Tokenizer?.CreateStreamingDecoder(), request.Options.StopStrings, stopIds);
            if (request.Options.PromptLogprobs is { } top)
                request.PromptLogprobs = progress.PromptLogprobs = TokenLogprob.ScorePrompt(request.SoftPrompt ?? engine.model, request.PromptTokens, top);
            using var scope = torch.NewDisposeScope();
            var ids = torch.tensor(request.PromptTokens.Select(t => (long)t).ToArray(), new long[] { 1, request.PromptTokens.Count });
            var sampler = new Sampler(request.Options, ids, torch.ones_like(ids, ScalarType.Bool), engine.model.Info.VocabSize, stopIds, request.MaxNewTokens);
            return new Sequence(request, progress, sampler) { Fed = request.PrefilledTokens };
        }

        /// <summary>Samples each sequence's next token from its row of <paramref name="logits"/> [n, vocab], streams it, and
        /// lets sequences that stopped leave.</summary>
        protected void Emit(IReadOnlyList<Sequence> sequences, Tensor logits) => Deliver(sequences, Select(sequences, logits).cpu().data<long>().ToArray());

        /// <summary>Each sequence's next token from its row of <paramref name="logits"/> [n, vocab], int64 [n] on the device.</summary>
        protected static Tensor Select(IReadOnlyList<Sequence> sequences, Tensor logits) => sequences.All(s => s.Sampler.IsPlainGreedy)
            ? logits.argmax(-1)
            : torch.cat(sequences.Select((s, i) => s.Sampler.Next(logits.narrow(0, i, 1))).ToArray());

        /// <summary>Streams each sequence's token and lets sequences that stopped leave; a null entry (a row that stepped as
        /// padding) and a sequence that left meanwhile are skipped.</summary>
        protected void Deliver(IReadOnlyList<Sequence?> sequences, long[] tokens)
        {
            var finished = new List<Sequence>();
            for (int i = 0; i < sequences.Count; i++)
            {
                if (sequences[i] is not { Left: false } s) continue;
                int id = (int)tokens[i];
                bool last = s.Progress.Tokens.Count + 1 >= s.Request.MaxNewTokens;
                var logprob = s.Request.Options.Logprobs is null ? null : s.Sampler.TakeLogprob(0);
                string delta = s.Progress.Push(id, last, logprob);
                engine.generated++;
                s.Request.Write(new GeneratedToken(0, id, delta, logprob));
                if (last || s.Progress.Finished is not null)
                {
                    engine.completed++;
                    finished.Add(s);
                }
                else s.Next = id;
            }
            if (finished.Count > 0) LeaveFinished(finished);
        }

        /// <summary>Sequences that finished at one step leave (together where the batch can do better than one by one).</summary>
        protected virtual void LeaveFinished(IReadOnlyList<Sequence> finished)
        {
            foreach (var s in finished) Leave(s, null);
        }

        protected void Finish(Sequence s, Exception? error)
        {
            s.Left = true;
            if (error is null) s.Request.Complete(s.Progress.Output(s.Request.PromptTokens, engine.Tokenizer));
            else s.Request.Fail(error);
            s.Dispose();
        }
    }

    /// <summary>
    /// FlexGen's throughput mode for a model stepped through a runner without row pools (an offloaded model): the requests
    /// admitted together form one block, prefilled at once and stepped until the last of them ends (finished rows feed padding,
    /// as in <see cref="Generator"/>); the next block forms from the requests that waited meanwhile.
    /// </summary>
    sealed class BlockBatch(ServingEngine engine, KvCacheConfig config) : Batch(engine)
    {
        IStepRunner? runner;
        Sequence[] rows = Array.Empty<Sequence>();          // the block's sequences by row, finished ones included
        readonly HashSet<Sequence> live = new();

        public override bool Busy => live.Count > 0;
        public override bool Admits => runner is null;
        public override IEnumerable<Sequence> All => rows.Where(live.Contains);
        public override long LiveTokens => All.Sum(s => (long)s.Fed);
        public override long AllocatedBytes => 0; // the runner's caches are placed by the offloading policy, outside this count
        public override long OccupiedEntries() => 0;

        public override void Join(IReadOnlyList<ServingRequest> requests)
        {
            var joiners = new List<Sequence>(requests.Count);
            try
            {
                foreach (var request in requests) joiners.Add(Begin(request));
                rows = joiners.ToArray();
                foreach (var s in rows) live.Add(s);
                var model = Engine.model;
                var prompts = rows.Select(s => s.Request.PromptTokens).ToArray();
                int longest = prompts.Max(p => p.Count);
                // A soft prompt's runner prefills it with the block and shifts the text's positions after its entries.
                runner = ((IStepModel?)rows[0].Request.SoftPrompt ?? model).CreateRunner(rows.Length, longest + rows.Max(s => s.Request.MaxNewTokens), longest, config);
                using var scope = torch.NewDisposeScope();
                Emit(rows, runner.Forward(ForwardBatch.LeftPadded(prompts, model.Device, lastPositionOnly: true)));
            }
            catch (Exception e)
            {
                foreach (var s in joiners.Where(live.Contains).ToArray()) Leave(s, e);
                foreach (var request in requests.Skip(joiners.Count)) request.Fail(e);
                Release();
            }
        }

        public override void Step()
        {
            try
            {
                using var scope = torch.NewDisposeScope();
                var device = Engine.model.Device;
                int n = rows.Length;
                // A finished row steps as padding (position -1: it sees only its own entries, and no one sees what it writes),
                // so it never runs past its own length (a learned-position model's context). Text positions: a soft prompt's
                // runner moves them after its entries.
                var positions = rows.Select(s => live.Contains(s) ? (long)(s.Fed - s.Request.SoftPromptTokens) : -1L).ToArray();
                var logits = runner!.Forward(new ForwardBatch
                {
                    InputIds = torch.tensor(rows.Select(s => live.Contains(s) ? (long)s.Next : 0L).ToArray(), new long[] { n, 1 }).to(device),
                    Positions = torch.tensor(positions, new long[] { n, 1 }).to(device),
                    RealTokens = rows.Select(s => live.Contains(s) ? 1 : 0).ToArray(),
                    HasPadding = live.Count < n,
                    MaxPosition = (int)positions.Max(),
                    LastPositionOnly = true,
                });
                foreach (var s in rows.Where(live.Contains)) s.Fed++;
                Engine.steps++;
                var running = Enumerable.Range(0, n).Where(i => live.Contains(rows[i])).ToArray();
                Emit(running.Select(i => rows[i]).ToArray(), logits.index_select(0, torch.tensor(running.Select(i => (long)i).ToArray()).to(device)));
                if (live.Count == 0) Release();
            }
            catch (Exception e)
            {
                Abandon(e);
            }
        }

        /// <summary>The sequence ends; its row keeps stepping (with padding) until the block ends.</summary>
        public override void Leave(Sequence s, Exception? error)
        {
            if (!live.Remove(s)) return;
            Finish(s, error);
            if (live.Count == 0) Release();
        }

        public override void Abandon(Exception error)
        {
            foreach (var s in live.ToArray()) Leave(s, error);
            Release();
        }

        void Release()
        {
            runner?.Dispose();
            runner = null;
        }

        public override void Dispose() => Release();
    }

    /// <summary>
    /// A decode step with static shapes over one pool's cache or, in one forward pass, several pools' caches (a CUDA graph per
    /// set of caches): every allocated row of each steps, the free ones with position -1 (they see no key, attend to nothing,
    /// and what they write is never visible), so joins and leaves between steps change only the inputs; the graph is captured
    /// anew when a pool is resized (a new cache object) or the set of pools changes.
    /// </summary>
    sealed class StaticStep : IDisposable
    {
        readonly ServingEngine engine;
        readonly CausalLanguageModel model;
        readonly KvCache[] caches;
        readonly Tensor[] slots;   // each cache's write slot: one for every row, or (RowSlots) a view of rowSlots
        readonly int[] offsets; // first row of each cache's rows in the step
        readonly Tensor ids, positions, rowSlots, logits;
        readonly int rows, maxPosition;
        readonly int[] ones;
        readonly StepGraph graph;

        public StaticStep(ServingEngine engine, CausalLanguageModel model, IReadOnlyList<KvCache> caches, bool capture)
        {
            this.engine = engine;
            this.model = model;
            this.caches = caches.ToArray();
            offsets = new int[caches.Count];
            for (int i = 1; i < caches.Count; i++) offsets[i] = offsets[i - 1] + caches[i - 1].Options.BatchSize;
            rows = offsets[^1] + caches[^1].Options.BatchSize;
            ones = Enumerable.Repeat(1, rows).ToArray();
            var device = model.Device;
            ids = torch.zeros(new long[] { rows, 1 }, ScalarType.Int64, device).DetachFromDisposeScope();
            positions = torch.full(new long[] { rows, 1 }, -1L, ScalarType.Int64, device).DetachFromDisposeScope();
            rowSlots = torch.zeros(rows, ScalarType.Int64, device).DetachFromDisposeScope();
            slots = caches.Select((c, i) => (c.RowSlots ? rowSlots.narrow(0, offsets[i], c.Options.BatchSize) : torch.zeros(1, ScalarType.Int64, device))
                .DetachFromDisposeScope()).ToArray();
            logits = torch.zeros(new long[] { rows, model.Info.VocabSize }, model.DType.ToScalarType(), device).DetachFromDisposeScope();
            // Positions stay below the model's context (a completion is capped by it) or, rolled, below the capacity; the rotary
            // tables are sized for that before the capture freezes them.
            maxPosition = (model.Info.LearnedPositions ? model.Info.MaxPositions : Math.Max(model.Info.MaxPositions, caches.Max(c => c.Options.Capacity))) - 1;
            graph = new StepGraph(this.caches.Zip(slots).ToArray(), Body, capture);
        }

        /// <summary>The caches the step writes into.</summary>
        public IReadOnlyList<KvCache> Caches => caches;

        /// <summary>True when this step runs over exactly these caches, in this order.</summary>
        public bool Serves(IReadOnlyList<KvCache> set) => set.Count == caches.Length && set.Zip(caches).All(p => ReferenceEquals(p.First, p.Second));

        /// <summary>Steps rows [0, n) of each cache with these tokens (int64 [n] on the device) at these positions (-1: the row
        /// steps as padding), writing each row of a <see cref="KvCache.RowSlots"/> cache at its slot (<c>Slots</c>, the row's
        /// entry count); returns each cache's logits [n, vocab] (views of a buffer the next step overwrites).</summary>
        public Tensor[] Run(IReadOnlyList<(Tensor NextIds, long[] Positions, long[]? Slots)> parts)
        {
            var hostPositions = Enumerable.Repeat(-1L, rows).ToArray();
            var hostSlots = new long[rows]; // free rows write their -1 at slot 0 of an empty row
            var active = new int[caches.Length];
            for (int i = 0; i < caches.Length; i++)
            {
                var (nextIds, nextPositions, rowSlotsOf) = parts[i];
                ids.narrow(0, offsets[i], nextPositions.Length).copy_(nextIds.unsqueeze(1));
                nextPositions.CopyTo(hostPositions, offsets[i]);
                if (caches[i].RowSlots) rowSlotsOf!.CopyTo(hostSlots, offsets[i]);
                else slots[i].fill_(caches[i].Length);
                active[i] = caches[i].ActiveRows;
                caches[i].ActiveRows = caches[i].Options.BatchSize;
            }
            using (var p = torch.tensor(hostPositions, new long[] { rows, 1 })) positions.copy_(p, true); // no wait for the device
            if (caches.Any(c => c.RowSlots))
                using (var s = torch.tensor(hostSlots)) rowSlots.copy_(s, true);
            int captured = graph.Captures;
            try
            {
                graph.Run();
            }
            finally
            {
                for (int i = 0; i < caches.Length; i++) caches[i].ActiveRows = active[i];
                engine.captures += graph.Captures - captured;
            }
            return caches.Select((_, i) => logits.narrow(0, offsets[i], parts[i].Positions.Length)).ToArray();
        }

        void Body()
        {
            using var scope = torch.NewDisposeScope();
            logits.copy_(model.Forward(new ForwardBatch
            {
                InputIds = ids,
                Positions = positions,
                RealTokens = ones,
                HasPadding = true, // free rows: their queries are masked out of what policies observe
                MaxPosition = maxPosition,
                LastPositionOnly = true,
            }, caches, slots));
            for (int i = 0; i < caches.Length; i++)
                if (!caches[i].RowSlots) slots[i].add_(1); // row slots come from the host each step
        }

        public void Dispose()
        {
            graph.Dispose();
            foreach (var t in new[] { ids, positions, rowSlots, logits }.Concat(slots)) t.Dispose();
        }
    }

    /// <summary>
    /// Sequences of one KV cache configuration stepped together through one cache, row i holding sequence i. Joiners are admitted at any
    /// step: their prompts are prefilled together in a scratch cache under the policy and their entries (with any per-entry
    /// policy state) copied into free rows; the pool grows (×2) and shrinks (when a quarter is used) with the load and is
    /// released when idle.
    /// </summary>
    sealed class DecodeBatch(ServingEngine engine, CausalLanguageModel model, KvCacheConfig config) : Batch(engine)
    {
        const int MinimumCapacity = 64;
        KvCache? cache;
        StaticStep? graphed;
        List<Sequence> Sequences { get; } = new(); // row i holds sequence i
        Tensor? nextIds;           // int64 [MaxBatchSize] on the device: row i's next input token, never read back to feed it
        HostReadback? readback;
        Launched? pending;         // the last step, its tokens not yet streamed (overlapped steps)
        readonly List<Launched> joined = new(); // joiners' first tokens (from their prefill) on their way to the host

        /// <summary>A launched step: the sequence each row stepped for (null: the row stepped as padding) and its tokens on their
        /// way to the host.</summary>
        sealed record Launched(Sequence?[] Rows, HostReadback.Ticket Tokens);

        Tensor NextIds => nextIds ??= torch.zeros(Engine.Options.MaxBatchSize, ScalarType.Int64, model.Device).DetachFromDisposeScope();
        // Reads in flight: the step being streamed, the step queued after it, and the first tokens of joiners admitted at a
        // boundary and of a chunked prefill ending there.
        HostReadback Readback => readback ??= new HostReadback(model.Device, Engine.Options.MaxBatchSize, reads: 4);

        /// <summary>A prompt longer than <see cref="ServingOptions.MaxPrefillTokensPerStep"/> being prefilled one chunk per step
        /// in a scratch cache, so the running sequences keep decoding meanwhile; it joins after its last chunk.</summary>
        sealed class ChunkedPrefill(Sequence joiner, ForwardBatch whole, ForwardBatch[] chunks, KvCache scratch) : IDisposable
        {
            public Sequence Joiner { get; } = joiner;
            public ForwardBatch[] Chunks { get; } = chunks;
            public KvCache Scratch { get; } = scratch;
            public int Next { get; set; }

            public void Dispose()
            {
                Scratch.Dispose();
                whole.InputIds.Dispose();
                whole.Positions.Dispose();
            }
        }

        ChunkedPrefill? prefilling;

        /// <summary>Joiners wait while a long prompt is being prefilled in chunks.</summary>
        public override bool Admits => prefilling is null;

        public override bool Busy => Sequences.Count > 0 || prefilling is not null;

        /// <summary>The running sequences and the one being prefilled.</summary>
        public override IEnumerable<Sequence> All => prefilling is null ? Sequences : Sequences.Append(prefilling.Joiner);

        public override long LiveTokens => Sequences.Sum(s => (long)Math.Min(s.Fed, cache?.Options.Capacity ?? 0));
        public override long AllocatedBytes => cache?.Bytes ?? 0;

        public override long OccupiedEntries() => cache?.OccupiedEntries() ?? 0;

        public override void Join(IReadOnlyList<ServingRequest> requests)
        {
            var joiners = new List<Sequence>(requests.Count);
            try
            {
                foreach (var request in requests) joiners.Add(Begin(request));
                if (joiners.Count == 1 && requests[0].PromptTokens.Count > Engine.Options.MaxPrefillTokensPerStep)
                {
                    StartChunkedPrefill(joiners[0]);
                    return;
                }
                // Joiners of one soft prompt (or none) are prefilled together: their rows start from the same entries.
                foreach (var group in joiners.GroupBy(s => s.Request.SoftPrompt))
                {
                    using var scope = torch.NewDisposeScope();
                    AddRows(group.ToArray(), Prefill(group.ToArray()));
                }
            }
            catch (Exception e)
            {
                // Rows a failed prefill may have filled are emptied; joiners that were running leave, the others just fail.
                if (cache is not null && cache.ActiveRows > Sequences.Count)
                {
                    cache.EmptyRows(Sequences.Count, cache.ActiveRows - Sequences.Count);
                    cache.ActiveRows = Sequences.Count;
                }
                foreach (var s in joiners)
                    if (Sequences.Contains(s)) Leave(s, e);
                    else Finish(s, e);
                foreach (var request in requests.Skip(joiners.Count)) request.Fail(e);
            }
        }

        /// <summary>Prefills the prompts of joiners of one soft prompt (left-padded together, after the soft prompt's entries,
        /// copied into each row) in a scratch cache under the pool's policy and moves them into the rows after the running ones;
        /// returns their next-token logits.</summary>
        Tensor Prefill(IReadOnlyList<Sequence> joiners)
        {
            var prompts = joiners.Select(s => s.Request.PromptTokens).ToArray();
            var soft = joiners[0].Request.SoftPrompt;
            int n = soft?.PromptLength ?? 0, longest = prompts.Max(p => p.Count);
            Fit(Sequences.Count + joiners.Count, n + longest, Ahead(joiners));
            using var scratch = Scratch(joiners.Count, soft, longest, longest);
            var logits = model.Forward(ForwardBatch.LeftPadded(prompts, model.Device, lastPositionOnly: true, firstPosition: n), scratch);
            Import(scratch);
            return logits;
        }

        /// <summary>A cache under the pool's policy for <paramref name="rows"/> prompts of at most <paramref name="longest"/>
        /// tokens fed in steps of <paramref name="stepTokens"/>, each row starting from <paramref name="soft"/>'s entries.</summary>
        KvCache Scratch(int rows, PromptedModel? soft, int longest, int stepTokens)
        {
            var scratch = model.CreateCache(rows, (soft?.PromptLength ?? 0) + longest, config, maxStepTokens: stepTokens);
            try
            {
                soft?.ImportPrefix(scratch, 0, rows, config);
            }
            catch
            {
                scratch.Dispose();
                throw;
            }
            return scratch;
        }

        /// <summary>Makes the prefilled joiners (imported into the rows after the running ones) running rows, their first
        /// tokens (from <paramref name="logits"/>) fed to the next step and streamed when that step is collected (read back
        /// without waiting for the device: the step is queued first).</summary>
        void AddRows(IReadOnlyList<Sequence> joiners, Tensor logits)
        {
            int start = Sequences.Count;
            Sequences.AddRange(joiners);
            cache!.ActiveRows = Sequences.Count;
            var first = Select(joiners, logits);
            NextIds.narrow(0, start, joiners.Count).copy_(first);
            joined.Add(new Launched(joiners.ToArray<Sequence?>(), Readback.Start(first)));
        }

        /// <summary>Appends the rows of a prefilled scratch cache after the running rows (each row's entries moved to its front
        /// first: left padding and, for evicting policies, the slots the prefill freed, are dropped).</summary>
        void Import(KvCache scratch)
        {
            scratch.Compact(config.Eviction.AppendOnly ? scratch.Length : null); // appending only, the longest prompt keeps every slot
            int rows = cache!.ActiveRows;
            cache.ActiveRows = rows + scratch.ActiveRows;
            cache.ImportRows(rows, scratch, 0, scratch.ActiveRows, 0, scratch.Length);
        }

        /// <summary>Starts prefilling one long prompt in chunks of <see cref="ServingOptions.MaxPrefillTokensPerStep"/> tokens
        /// (the first runs now, the others at the next steps, before each decode step).</summary>
        void StartChunkedPrefill(Sequence joiner)
        {
            var prompt = joiner.Request.PromptTokens;
            var soft = joiner.Request.SoftPrompt;
            int chunk = Engine.Options.MaxPrefillTokensPerStep;
            var scratch = Scratch(1, soft, prompt.Count, chunk);
            // Outside any dispose scope: the prompt's tensors live until the prefill ends (ChunkedPrefill.Dispose).
            var whole = ForwardBatch.LeftPadded(new[] { prompt }, model.Device, lastPositionOnly: true, firstPosition: soft?.PromptLength ?? 0);
            prefilling = new ChunkedPrefill(joiner, whole, whole.Chunks(chunk).ToArray(), scratch);
            AdvancePrefill();
        }

        /// <summary>Runs the next chunk of the prompt being prefilled; after the last one it joins the running rows.</summary>
        void AdvancePrefill()
        {
            var p = prefilling!;
            try
            {
                using var scope = torch.NewDisposeScope();
                var logits = model.Forward(p.Chunks[p.Next++], p.Scratch);
                if (p.Next < p.Chunks.Length) return;
                Fit(Sequences.Count + 1, p.Scratch.Length, Ahead(new[] { p.Joiner }));
                Import(p.Scratch);
                prefilling = null;
                p.Dispose();
                AddRows(new[] { p.Joiner }, logits);
            }
            catch (Exception e)
            {
                if (prefilling is not null) DropPrefill(e);
                else throw;
            }
        }

        void DropPrefill(Exception error)
        {
            var p = prefilling!;
            prefilling = null;
            p.Dispose();
            Finish(p.Joiner, error);
        }

        /// <summary>
        /// One decode step over the running rows. Overlapped (<see cref="ServingOptions.OverlapSteps"/>): the step is queued
        /// before the previous step's tokens are streamed, its input tokens taken on the device from the previous step's
        /// selection, so the device never waits for the host; a sequence whose stop is seen late steps once more, discarded.
        /// </summary>
        public override void Step()
        {
            if (prefilling is not null) AdvancePrefill();
            if (Sequences.Count == 0) return;
            try
            {
                Collect(Sequences.Any(s => s.WantsStep) ? Launch() : null);
            }
            catch (Exception e)
            {
                // A failed step leaves the cache in an unknown state: its sequences end with the error, the pool starts afresh.
                Abandon(e);
            }
        }

        /// <summary>
        /// One decode step over the rows of several pools in one forward pass (<see cref="ServingOptions.StepPoolsTogether"/>):
        /// the weights are read once for every row, attention runs per pool under its own policy
        /// (<see cref="CausalLanguageModel.Forward(ForwardBatch, IReadOnlyList{KvCache}, IReadOnlyList{Tensor})"/>), with dynamic shapes.
        /// </summary>
        public static void StepTogether(IReadOnlyList<DecodeBatch> pools)
        {
            var parts = new List<(DecodeBatch Pool, Sequence?[] Rows)>();
            foreach (var pool in pools)
            {
                if (pool.prefilling is not null) pool.AdvancePrefill();
                if (pool.Sequences.Count == 0) continue;
                try
                {
                    if (!pool.Sequences.Any(s => s.WantsStep)) pool.Collect(null);
                    else
                    {
                        pool.Fit(pool.Sequences.Count, 0, pool.Ahead());
                        parts.Add((pool, pool.StepRows()));
                    }
                }
                catch (Exception e)
                {
                    pool.Abandon(e);
                }
            }
            if (parts.Count == 1)
            {
                var pool = parts[0].Pool;
                try
                {
                    pool.Collect(pool.Launch()); // alone after all: its own (static-shape) step
                }
                catch (Exception e)
                {
                    pool.Abandon(e);
                }
                return;
            }
            if (parts.Count == 0) return;
            var launched = new Launched[parts.Count];
            try
            {
                using var scope = torch.NewDisposeScope();
                var engine = parts[0].Pool.Engine;
                var model = engine.inMemory!;
                var caches = parts.Select(p => p.Pool.cache!).ToArray();
                bool staticShapes = caches.All(engine.StaticShapesServe);
                Tensor[] logits;
                if (staticShapes && !caches.Any(StepGraph.EvictsAfterNextStep))
                {
                    if (engine.together?.Serves(caches) != true)
                    {
                        engine.together?.Dispose();
                        engine.together = new StaticStep(engine, model, caches, capture: !engine.Options.ForceStaticShapes);
                    }
                    logits = engine.together.Run(parts.Select(p => (p.Pool.NextIds.narrow(0, 0, p.Rows.Length), Positions(p.Rows), p.Pool.RowSlotsOf())).ToArray());
                }
                else
                {
                    var rows = parts.SelectMany(p => p.Rows).ToArray();
                    var all = model.Forward(EagerStep(torch.cat(parts.Select(p => p.Pool.NextIds.narrow(0, 0, p.Rows.Length)).ToArray()), rows, model.Device), caches);
                    if (staticShapes) foreach (var c in caches) c.AlignLengths(); // the static steps that follow write every layer at one slot
                    int start = 0;
                    logits = new Tensor[parts.Count];
                    for (int i = 0; i < parts.Count; i++)
                    {
                        logits[i] = all.narrow(0, start, parts[i].Rows.Length);
                        start += parts[i].Rows.Length;
                    }
                }
                engine.steps++;
                for (int i = 0; i < parts.Count; i++) launched[i] = parts[i].Pool.Record(parts[i].Rows, logits[i]);
            }
            catch (Exception e)
            {
                // The pools' caches are in an unknown state: every pool of the step starts afresh.
                foreach (var (pool, _) in parts) pool.Abandon(e);
                return;
            }
            for (int i = 0; i < parts.Count; i++)
            {
                try
                {
                    parts[i].Pool.Collect(launched[i]);
                }
                catch (Exception e)
                {
                    parts[i].Pool.Abandon(e);
                }
            }
        }

        /// <summary>With <see cref="KvCache.RowSlots"/>: each row's next slot, its entry count (a row holds its entries at [0, fed)).</summary>
        long[]? RowSlotsOf() => cache!.RowSlots ? Sequences.Select(s => (long)s.Fed).ToArray() : null;

        /// <summary>Each row's position in the step: its sequence's next, or -1 where it steps as padding.</summary>
        static long[] Positions(Sequence?[] rows) => rows.Select(s => s is null ? -1L : s.Fed).ToArray();

        /// <summary>The running rows as a step sees them: each row's sequence, or null where it steps as padding (it wants no
        /// more tokens).</summary>
        Sequence?[] StepRows() => Sequences.Select(s => s.WantsStep ? s : null).ToArray();

        /// <summary>A one-token step of these rows (padding at position -1), with dynamic shapes.</summary>
        static ForwardBatch EagerStep(Tensor ids, Sequence?[] rows, Device device)
        {
            var positions = rows.Select(s => s is null ? -1L : s.Fed).ToArray();
            var stepPositions = torch.empty(rows.Length, 1, ScalarType.Int64, device);
            using (var host = torch.tensor(positions, new long[] { rows.Length, 1 })) stepPositions.copy_(host, true); // no wait for the device
            return new ForwardBatch
            {
                InputIds = ids.unsqueeze(1),
                Positions = stepPositions,
                RealTokens = rows.Select(s => s is null ? 0 : 1).ToArray(),
                HasPadding = rows.Contains(null),
                MaxPosition = (int)positions.Max(),
                LastPositionOnly = true,
            };
        }

        /// <summary>Queues this pool's step alone: rows whose sequence wants no more tokens step as padding (position -1), so the
        /// step's shapes stay those of the pool.</summary>
        Launched Launch()
        {
            Fit(Sequences.Count, 0, Ahead());
            using var scope = torch.NewDisposeScope();
            var c = cache!;
            var device = model.Device;
            var rows = StepRows();
            var ids = NextIds.narrow(0, 0, rows.Length);
            Tensor logits;
            // A step that evicts runs eagerly anyway: over the pool's live slots (dynamic shapes), not over every static slot.
            bool staticShapes = Engine.StaticShapesServe(c);
            if (staticShapes && !StepGraph.EvictsAfterNextStep(c))
            {
                if (graphed?.Serves(new[] { c }) != true)
                {
                    graphed?.Dispose();
                    graphed = new StaticStep(Engine, model, new[] { c }, capture: !Engine.Options.ForceStaticShapes);
                }
                logits = graphed.Run(new[] { (ids, Positions(rows), RowSlotsOf()) })[0];
            }
            else
            {
                logits = model.Forward(EagerStep(ids, rows, device), c);
                if (staticShapes) c.AlignLengths(); // the static steps that follow write every layer at one slot
            }
            Engine.steps++;
            return Record(rows, logits);
        }

        /// <summary>After a step of the pool's rows (<paramref name="logits"/> [rows, vocab]): advances them, selects their next
        /// tokens on the device, feeds them to the next step and starts reading them back.</summary>
        Launched Record(Sequence?[] rows, Tensor logits)
        {
            foreach (var s in rows) if (s is not null) s.Fed++;
            var next = Select(Sequences, logits);
            NextIds.narrow(0, 0, rows.Length).copy_(next); // the next step's input, without a trip through the host
            return new Launched(rows, Readback.Start(next));
        }

        /// <summary>Streams the tokens of the step before <paramref name="launched"/> when steps overlap, else of
        /// <paramref name="launched"/> itself (null: no step was queued now).</summary>
        void Collect(Launched? launched)
        {
            var previous = pending;
            pending = Engine.overlap ? launched : null;
            var collect = Engine.overlap ? previous : launched;
            bool firstTokens = joined.Count > 0;
            if (collect is null && launched is null && !firstTokens) throw new InvalidOperationException("a pool with running sequences has no step in flight.");
            // Joiners' first tokens go first: the step just queued holds their second.
            if (firstTokens)
            {
                var first = joined.ToArray(); // delivering may end the pool's rows, which drops what is still listed
                joined.Clear();
                foreach (var j in first) Deliver(j.Rows, Readback.Wait(j.Tokens));
            }
            if (collect is not null) Deliver(collect.Rows, Readback.Wait(collect.Tokens));
        }

        /// <summary>Removes a sequence (finished when <paramref name="error"/> is null): the last row moves into its row, so the
        /// running rows stay [0, n).</summary>
        public override void Leave(Sequence s, Exception? error)
        {
            if (prefilling?.Joiner == s)
            {
                DropPrefill(error ?? new InvalidOperationException("a sequence left before its prefill ended."));
                return;
            }
            int row = Sequences.IndexOf(s), last = Sequences.Count - 1;
            if (cache is not null)
            {
                if (row != last)
                {
                    cache.MoveRow(last, row);
                    NextIds.narrow(0, row, 1).copy_(NextIds.narrow(0, last, 1));
                }
                else cache.EmptyRows(row, 1);
            }
            Sequences[row] = Sequences[last];
            Sequences.RemoveAt(last);
            RowsLeft();
            Finish(s, error);
        }

        /// <summary>The last rows leave in one range (a round of requests that ends together: every row, and no row moves); the
        /// others one by one, from the highest row down, each filled by the last row.</summary>
        protected override void LeaveFinished(IReadOnlyList<Sequence> finished)
        {
            var leaving = finished.ToHashSet();
            int end = Sequences.Count;
            while (end > 0 && leaving.Contains(Sequences[end - 1])) end--;
            var tail = Sequences.GetRange(end, Sequences.Count - end);
            if (tail.Count > 0)
            {
                cache?.EmptyRows(end, tail.Count);
                Sequences.RemoveRange(end, tail.Count);
                RowsLeft();
                foreach (var s in tail) Finish(s, null);
            }
            foreach (var s in finished.Except(tail).OrderByDescending(Sequences.IndexOf).ToArray()) Leave(s, null);
        }

        /// <summary>Rows [0, Sequences.Count) stay in use; a pool left without any idles: it keeps its cache (emptied as a fresh
        /// one is) and its graph for the next requests.</summary>
        void RowsLeft()
        {
            if (cache is not null) cache.ActiveRows = Sequences.Count;
            if (Sequences.Count > 0) return;
            if (pending is not null) Readback.Drop(pending.Tokens);
            pending = null;
            foreach (var j in joined) Readback.Drop(j.Tokens);
            joined.Clear();
            cache?.Compact();
        }

        public override void Abandon(Exception error)
        {
            foreach (var s in Sequences) Finish(s, error);
            Sequences.Clear();
            if (prefilling is not null) DropPrefill(error);
            Release();
        }

        /// <summary>Boundaries in a row at which the pool could have shrunk; it shrinks after <see cref="ShrinkAfter"/> (a pool
        /// that resizes re-captures its CUDA graph: load that dips for a moment should not cost two captures).</summary>
        int lowUse;
        const int ShrinkAfter = 64;

        /// <summary>Step-boundary housekeeping: an idle pool keeps its shapes for the next requests; a busy one shrinks after a
        /// sustained low use.</summary>
        public override void Fit()
        {
            if (Sequences.Count > 0 || prefilling is not null) Fit(0, 0, Ahead(), housekeeping: true);
        }

        /// <summary>Steps the pool may still run for its rows and <paramref name="joiners"/> (the most tokens a row still wants,
        /// plus the overlapped step), when its cache only appends; 0 when its policy evicts (its capacity is the policy's).</summary>
        int Ahead(IEnumerable<Sequence>? joiners = null) => !config.Eviction.AppendOnly ? 0
            : Sequences.Concat(joiners ?? Enumerable.Empty<Sequence>()).Select(s => s.Request.MaxNewTokens - s.FedBack)
                .DefaultIfEmpty(0).Max() + 1;

        /// <summary>Sizes the pool for <paramref name="rows"/> running rows, joiners of up to <paramref name="longest"/> entries
        /// (a soft prompt's and the prompt's) and <paramref name="ahead"/> more steps. It grows when they would not fit: a cache that only appends is sized
        /// once for what its rows still want (rounded up to 64 slots: a resize re-captures the pool's CUDA graph, and attention
        /// reads every slot), an evicting one doubles when more than three quarters full; holes are compacted away first. It
        /// shrinks (rows, or slots, to a quarter or less in use) only at <paramref name="housekeeping"/> boundaries, after
        /// <see cref="ShrinkAfter"/> of them in a row could have.</summary>
        void Fit(int rows, int longest, int ahead, bool housekeeping = false)
        {
            if (cache is null && rows == 0) return;
            if (cache is null)
            {
                int length = Math.Max(longest + ahead + 1, MinimumCapacity);
                cache = model.CreateCache(Math.Min(Pow2(rows), Engine.Options.MaxBatchSize), ahead > 0 ? RoundUp(length) : Pow2(length), config);
                cache.ActiveRows = 0;
                UseRowSlots();
                return;
            }
            rows = Math.Max(rows, cache.ActiveRows);
            int allocatedRows = cache.Options.BatchSize, capacity = cache.Options.Capacity;
            // With a slot per row a row needs its prompt and its tokens, wherever the others are; with one slot for every row the
            // pool's length grows with each step until a compaction.
            int Need() => cache.RowSlots
                ? Math.Max(Sequences.Select(s => s.Request.PrefilledTokens + s.Request.MaxNewTokens + 1).DefaultIfEmpty(0).Max(), longest + ahead + 1)
                : Math.Max(cache.Length, longest) + ahead + 1;
            bool fewerRows = allocatedRows > 1 && rows * 4 <= allocatedRows, fewerSlots = capacity > MinimumCapacity && Need() * 4 <= capacity;
            if (housekeeping) lowUse = fewerRows || fewerSlots ? lowUse + 1 : 0;
            bool shrink = housekeeping && lowUse >= ShrinkAfter;
            if (!cache.RowSlots && (Need() > capacity || shrink && fewerSlots)) cache.Compact();
            int need = Need();
            int newCapacity = capacity;
            if (ahead > 0 && need > capacity) newCapacity = RoundUp(need);
            while (ahead == 0 && need * 4 > newCapacity * 3) newCapacity *= 2;
            if (shrink && capacity > MinimumCapacity && need * 4 <= capacity) newCapacity = ahead > 0 ? RoundUp(need) : Math.Max(MinimumCapacity, Pow2(need * 2));
            int newRows = rows > allocatedRows ? Math.Min(Pow2(rows), Engine.Options.MaxBatchSize)
                : shrink && fewerRows ? Pow2(Math.Max(rows, 1)) : allocatedRows;
            if (shrink) lowUse = 0;
            if (newRows == allocatedRows && newCapacity == capacity)
            {
                UseRowSlots();
                return;
            }
            if (cache.RowSlots) cache.TrimTo(Sequences.Select(s => s.Fed).DefaultIfEmpty(0).Max()); // a row's entries: [0, tokens fed)
            var resized = cache.Resized(newRows, newCapacity);
            Engine.Forget(cache);
            cache.Dispose();
            cache = resized;
            UseRowSlots();
        }

        /// <summary>A pool of a cache that only appends steps each row at its own slot (<see cref="KvCache.RowSlots"/>) when its
        /// steps have static shapes; every slot then counts as in use.</summary>
        void UseRowSlots()
        {
            if (!config.Eviction.AppendOnly || !Engine.StaticShapesServe(cache!)) return;
            cache!.RowSlots = true;
            cache.FillToCapacity();
        }

        static int RoundUp(int n) => Math.Max(MinimumCapacity, (n + MinimumCapacity - 1) / MinimumCapacity * MinimumCapacity);

        static int Pow2(int n) => n <= 1 ? 1 : 1 << (32 - System.Numerics.BitOperations.LeadingZeroCount((uint)(n - 1)));

        void Release()
        {
            pending = null; // its rows have all left
            joined.Clear();
            readback?.Dispose(); // after the copies in flight
            readback = null;
            nextIds?.Dispose();
            nextIds = null;
            graphed?.Dispose();
            graphed = null;
            if (cache is not null) Engine.Forget(cache);
            cache?.Dispose();
            cache = null;
        }

        public override void Dispose()
        {
            prefilling?.Dispose();
            Release();
        }
    }
}
