using System.CommandLine;
using Tern.Generation;
using Tern.Models;
using Tern.Offloading;
using Tern.Runtime;

namespace Tern.Cli.Commands;

/// <summary><c>tern generate</c>: continue one or more prompts and report speed.</summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var common = new CommonOptions();
        var sampling = new SamplingOptions();
        var kv = new KvPolicyFlags();
        var offload = new OffloadFlags();
        var sparsity = new SparsityFlags();
        var softPrompt = new SoftPromptFlag();
        var prompts = new Argument<string[]>("prompt") { Description = "Prompt text (several make a batch).", Arity = ArgumentArity.ZeroOrMore };
        var promptFile = new Option<FileInfo?>("--prompt-file", "-f") { Description = "Read the prompt from a file (with --lines: one prompt per line)." };
        var lines = new Option<bool>("--lines") { Description = "Treat each non-empty line of --prompt-file as a prompt of the batch." };
        var noStream = new Option<bool>("--no-stream") { Description = "Print the text at the end instead of token by token." };
        var command = new Command("generate", "Continue prompts with a model and print the text and speed.") { prompts, promptFile, lines, noStream };
        common.AddTo(command);
        sampling.AddTo(command);
        kv.AddTo(command);
        offload.AddTo(command);
        sparsity.AddTo(command);
        softPrompt.AddTo(command);
        var json = new JsonFlags();
        json.AddTo(command);
        command.SetAction((result, cancellation) => RunAsync(result, common, sampling, kv, offload, sparsity, softPrompt, json, prompts, promptFile, lines, noStream, cancellation));
        return command;
    }

    static async Task<int> RunAsync(ParseResult r, CommonOptions common, SamplingOptions sampling, KvPolicyFlags kv, OffloadFlags offload,
        SparsityFlags sparsityFlags, SoftPromptFlag softPrompt, JsonFlags json, Argument<string[]> promptsArg,
        Option<FileInfo?> promptFile, Option<bool> lines, Option<bool> noStream, CancellationToken cancellation)
    {
        var texts = new List<string>(r.GetValue(promptsArg) ?? Array.Empty<string>());
        if (r.GetValue(promptFile) is { } file)
        {
            string content = TextFiles.Read(file.FullName, "--prompt-file");
            if (r.GetValue(lines)) texts.AddRange(content.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.Length > 0));
            else texts.Add(content);
        }
        if (texts.Count == 0) texts.Add("Once upon a time");
        // Before the model loads: an empty prompt has nothing to continue.
        if (texts.FindIndex(string.IsNullOrEmpty) is var empty and >= 0)
            throw new UsageException(r.GetValue(promptFile) is { } source ? $"--prompt-file '{source.FullName}' holds an empty prompt; give it some text."
                : texts.Count > 1 ? $"<prompt> {empty} of the batch is empty; every prompt needs at least one character." : "<prompt> is empty; give some text to continue.");
        var options = sampling.Read(r).WithKvPolicy(kv.Read(r));
        var (model, tokenizer, description, blockSize, report, sparse) = offload.Enabled(r)
            ? LoadOffloaded(r, common, offload, softPrompt, sparsityFlags, texts, options) : Load(r, common, softPrompt, sparsityFlags);
        using (model as IDisposable)
        using (sparse)
        {
            options = options with { Constraint = json.Read(r, tokenizer) };
            var generator = new Generator(model, tokenizer);
            Console.Error.WriteLine(description);
            var prompts = texts.Select(t => tokenizer.Encode(t, addSpecialTokens: true)).ToArray();
            if (ContextCap.Note(model.Info, prompts.Max(p => p.Count), options) is { } note) Console.Error.WriteLine(note);
            if (texts.Count == 1 && !r.GetValue(noStream))
            {
                var started = DateTime.UtcNow;
                int count = 0;
                // The prompt is echoed with the first token: a prompt the generator refuses (too long) is not printed whole.
                await foreach (var token in generator.StreamAsync(prompts, options, cancellation))
                {
                    if (count++ == 0) Console.Write(texts[0]);
                    Console.Write(token.Text);
                }
                Console.WriteLine();
                double seconds = (DateTime.UtcNow - started).TotalSeconds;
                Console.Error.WriteLine($"{count} tokens in {seconds:F2} s ({count / Math.Max(seconds, 1e-9):F1} tokens/s, streaming)");
            }
            else
            {
                // An offloaded model runs one block of gbs × ngb prompts at a time.
                for (int start = 0; start < texts.Count; start += blockSize)
                {
                    var chunk = texts.Skip(start).Take(blockSize).ToArray();
                    var result = generator.GenerateTokens(prompts.Skip(start).Take(blockSize).ToArray(), options, cancellation);
                    for (int i = 0; i < chunk.Length; i++)
                    {
                        if (texts.Count > 1) Console.WriteLine($"--- [{start + i}] ({result.Sequences[i].FinishReason})");
                        Console.WriteLine(chunk[i] + result.Sequences[i].Text);
                    }
                    var s = result.Stats;
                    Console.Error.WriteLine($"prefill: {s.PromptTokens} tokens in {s.Prefill.TotalMilliseconds:F1} ms ({s.PrefillTokensPerSecond:F0} tokens/s); " +
                        $"decode: {s.DecodeSteps} steps x batch {s.BatchSize} in {s.Decode.TotalSeconds:F2} s ({s.DecodeTokensPerSecond:F1} tokens/s, {s.DecodeMillisecondsPerStep:F2} ms/step)");
                }
            }
            report?.Invoke();
            return 0;
        }
    }

    /// <summary>The model in memory, with the sparsity asked for set on it (the last item owns what it loaded) and wrapped in its
    /// soft prompt when one is given.</summary>
    static (IStepModel, Tern.Tokenization.TernTokenizer, string, int, Action?, IDisposable?) Load(ParseResult r, CommonOptions common,
        SoftPromptFlag softPrompt, SparsityFlags sparsityFlags)
    {
        var (model, tokenizer, folder) = common.Load(r, needTokenizer: true);
        string description = $"model: {folder} ({model.Info.ModelType}, {model.Info.ParameterCount / 1e6:F1}M parameters, " +
            $"{model.DType.ToString().ToLowerInvariant()} on {model.Device.type.ToString().ToLowerInvariant()})";
        Tern.Sparsity.DejaVuSparsity? sparse = null;
        Tern.Prompting.SoftPrompt? prompt;
        try
        {
            sparse = sparsityFlags.Apply(r, common, model);
            prompt = softPrompt.Load(r, model);
        }
        catch
        {
            sparse?.Dispose();
            model.Dispose();
            throw;
        }
        if (prompt is null) return (model, tokenizer!, description, int.MaxValue, null, sparse);
        using (prompt)
            return (Tern.Prompting.PromptedModel.Create(model, prompt, ownModel: true), tokenizer!,
                $"{description}, soft prompt of {prompt.Length} vectors ({r.GetValue(softPrompt.File)!.Name}, prefilled once)", int.MaxValue, null, sparse);
    }

    /// <summary>The model offloaded by --offload (FlexGen): placed by the policy given or searched, stepped in blocks, wrapped in
    /// its soft prompt when one is given (prefilled with each block).</summary>
    static (IStepModel, Tern.Tokenization.TernTokenizer, string, int, Action?, IDisposable?) LoadOffloaded(ParseResult r, CommonOptions common, OffloadFlags offload,
        SoftPromptFlag softPrompt, SparsityFlags sparsityFlags, List<string> texts, GenerationOptions options)
    {
        var (folder, load) = common.LoadOptions(r);
        var tokenizer = Tern.Tokenization.TernTokenizer.Load(folder);
        int longest = texts.Max(t => tokenizer.Encode(t).Count) + softPrompt.Length(r); // a block's caches hold the soft prompt's entries too
        var device = ComputeOptions.ResolveDevice(load.Device);
        var (offloadOptions, prediction) = offload.Resolve(r, folder, load.DType, device, longest, options.MaxNewTokens, Console.Error, options.Cache);
        OffloadFlags.Print(Console.Error, offloadOptions.Policy, prediction);
        var model = CommonOptions.LoadOffloaded(folder, load, offloadOptions);
        string description = $"model: {folder} ({model.Info.ModelType}) offloaded: {model.Policy}";
        Action report = () => Console.Error.WriteLine($"offloaded: predicted {prediction.TokensPerSecond:F2} tokens/s; peak GPU placement {Units.Bytes(model.PeakGpuBytes)}");
        Tern.Sparsity.DejaVuSparsity? sparse = null;
        try
        {
            sparse = sparsityFlags.Apply(r, common, model);
            using var prompt = softPrompt.Load(r, model.TokenEmbeddingWidth);
            if (prompt is null) return (model, tokenizer, description, model.Policy.BlockSize, report, sparse);
            return (Tern.Prompting.PromptedModel.Create(model, prompt, ownModel: true), tokenizer,
                $"{description}, soft prompt of {prompt.Length} vectors ({r.GetValue(softPrompt.File)!.Name}, prefilled with each block)", model.Policy.BlockSize, report, sparse);
        }
        catch
        {
            sparse?.Dispose();
            model.Dispose();
            throw;
        }
    }
}
