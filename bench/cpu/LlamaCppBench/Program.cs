using System.Diagnostics;
using System.Globalization;
using LLama;
using LLama.Common;
using LLama.Native;

// Times llama.cpp the way `tern bench` times Tern: BATCH sequences of PROMPT random tokens prefilled in one call, then NEW
// greedy decode steps of one token per sequence; prints one CSV row per batch size:
//   engine,gguf,threads,batch,prompt,new_tokens,prefill_ms,decode_ms_per_step,decode_tok_s
// Usage: LlamaCppBench MODEL.gguf THREADS PROMPT NEW BATCHES(1,8)
if (args.Length != 5)
{
    Console.Error.WriteLine("usage: LlamaCppBench MODEL.gguf THREADS PROMPT NEW BATCHES");
    return 2;
}
string path = args[0];
int threads = int.Parse(args[1], CultureInfo.InvariantCulture), prompt = int.Parse(args[2], CultureInfo.InvariantCulture), steps = int.Parse(args[3], CultureInfo.InvariantCulture);
int[] batches = args[4].Split(',').Select(b => int.Parse(b, CultureInfo.InvariantCulture)).ToArray();
NativeLogConfig.llama_log_set((_, _) => { });
foreach (int batch in batches)
{
    var parameters = new ModelParams(path)
    {
        ContextSize = (uint)(batch * (prompt + steps + 8)), BatchSize = (uint)Math.Max(512, batch * prompt), UBatchSize = (uint)Math.Max(512, batch * prompt),
        SeqMax = (uint)batch, Threads = threads, BatchThreads = threads, GpuLayerCount = 0,
    };
    using var weights = LLamaWeights.LoadFromFile(parameters);
    using var context = weights.CreateContext(parameters);
    int vocab = weights.Vocab.Count;
    var random = new Random(0);
    void Run(int newTokens, out double prefillMs, out double decodeMs)
    {
        context.NativeHandle.MemoryClear();
        var llamaBatch = new LLamaBatch();
        for (int s = 0; s < batch; s++)
            for (int i = 0; i < prompt; i++) llamaBatch.Add(random.Next(vocab), i, (LLamaSeqId)s, i == prompt - 1);
        var watch = Stopwatch.StartNew();
        if (context.NativeHandle.Decode(llamaBatch) != DecodeResult.Ok) throw new InvalidOperationException("prefill failed");
        var next = Enumerable.Range(0, batch).Select(s => Argmax(context.NativeHandle.GetLogitsIth(s * prompt + prompt - 1))).ToArray();
        prefillMs = watch.Elapsed.TotalMilliseconds;
        watch.Restart();
        for (int t = 0; t < newTokens; t++)
        {
            llamaBatch.Clear();
            for (int s = 0; s < batch; s++) llamaBatch.Add(next[s], prompt + t, (LLamaSeqId)s, true);
            if (context.NativeHandle.Decode(llamaBatch) != DecodeResult.Ok) throw new InvalidOperationException("decode failed");
            for (int s = 0; s < batch; s++) next[s] = Argmax(context.NativeHandle.GetLogitsIth(s));
        }
        decodeMs = watch.Elapsed.TotalMilliseconds;
    }
    // Warm-up as `tern bench` warms up (its WarmUp): at least a second, until a round compiles no method (LLamaSharp's
    // marshalling is JIT-compiled too), so both engines are timed in their steady state.
    var warm = Stopwatch.StartNew();
    long compiled;
    do
    {
        compiled = System.Runtime.JitInfo.GetCompiledMethodCount();
        Run(3, out _, out _);
    } while (warm.Elapsed.TotalSeconds < 15 && (warm.Elapsed.TotalSeconds < 1 || System.Runtime.JitInfo.GetCompiledMethodCount() != compiled));
    Run(steps, out double prefill, out double decode);
    double perStep = decode / steps;
    Console.WriteLine(string.Join(',', "llama.cpp", Path.GetFileName(path), threads, batch, prompt, steps,
        prefill.ToString("F1", CultureInfo.InvariantCulture), perStep.ToString("F3", CultureInfo.InvariantCulture),
        (batch * 1000 / perStep).ToString("F1", CultureInfo.InvariantCulture)));
}
return 0;

static int Argmax(Span<float> logits)
{
    int best = 0;
    for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
    return best;
}
