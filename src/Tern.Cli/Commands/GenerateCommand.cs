using System.CommandLine;
using Tern.Generation;
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
        var prompts = new Argument<string[]>("prompt") { Description = "Prompt text (several make a batch).", Arity = ArgumentArity.ZeroOrMore };
        var promptFile = new Option<FileInfo?>("--prompt-file", "-f") { Description = "Read the prompt from a file (with --lines: one prompt per line)." };
        var lines = new Option<bool>("--lines") { Description = "Treat each non-empty line of --prompt-file as a prompt of the batch." };
        var noStream = new Option<bool>("--no-stream") { Description = "Print the text at the end instead of token by token." };
        var command = new Command("generate", "Continue prompts with a model and print the text and speed.") { prompts, promptFile, lines, noStream };
        common.AddTo(command);
        sampling.AddTo(command);
        kv.AddTo(command);
        offload.AddTo(command);
        command.SetAction((result, cancellation) => RunAsync(result, common, sampling, kv, offload, prompts, promptFile, lines, noStream, cancellation));
        return command;
    }

    static async Task<int> RunAsync(ParseResult r, CommonOptions common, SamplingOptions sampling, KvPolicyFlags kv, OffloadFlags offload, Argument<string[]> promptsArg,
        Option<FileInfo?> promptFile, Option<bool> lines, Option<bool> noStream, CancellationToken cancellation)
    {
        var texts = new List<string>(r.GetValue(promptsArg) ?? Array.Empty<string>());
        if (r.GetValue(promptFile) is { } file)
        {
            if (!file.Exists) throw new FileNotFoundException($"--prompt-file: '{file.FullName}' does not exist.");
            string content = await File.ReadAllTextAsync(file.FullName, cancellation);
            if (r.GetValue(lines)) texts.AddRange(content.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.Length > 0));
            else texts.Add(content);
        }
        foreach (string text in texts)
            if (text.StartsWith("--", StringComparison.Ordinal) && !text.Contains(' '))
                throw new ArgumentException($"unknown option '{text}' (run 'tern generate --help' for the options; quote a prompt that starts with --).");
        if (texts.Count == 0) texts.Add("Once upon a time");
        var options = sampling.Read(r) with { CachePolicy = kv.Create(r) };
        if (offload.Enabled(r)) return Offloaded(r, common, offload, texts, options);
        var (model, tokenizer, folder) = common.Load(r, needTokenizer: true);
        using (model)
        {
            var generator = new Generator(model, tokenizer);
            Console.Error.WriteLine($"model: {folder} ({model.Info.ModelType}, {model.Info.ParameterCount / 1e6:F1}M parameters, {model.DType.ToString().ToLowerInvariant()} on {model.Device.type.ToString().ToLowerInvariant()})");
            GenerationResult result;
            if (texts.Count == 1 && !r.GetValue(noStream))
            {
                Console.Write(texts[0]);
                var started = DateTime.UtcNow;
                int count = 0;
                await foreach (var token in generator.StreamAsync(texts, options, cancellation))
                {
                    Console.Write(token.Text);
                    count++;
                }
                Console.WriteLine();
                double seconds = (DateTime.UtcNow - started).TotalSeconds;
                Console.Error.WriteLine($"{count} tokens in {seconds:F2} s ({count / Math.Max(seconds, 1e-9):F1} tokens/s, streaming)");
                return 0;
            }
            result = generator.Generate(texts, options, cancellation);
            for (int i = 0; i < result.Sequences.Count; i++)
            {
                if (texts.Count > 1) Console.WriteLine($"--- [{i}] ({result.Sequences[i].FinishReason})");
                Console.WriteLine(texts[i] + result.Sequences[i].Text);
            }
            var s = result.Stats;
            Console.Error.WriteLine($"prefill: {s.PromptTokens} tokens in {s.Prefill.TotalMilliseconds:F1} ms ({s.PrefillTokensPerSecond:F0} tokens/s); " +
                $"decode: {s.DecodeSteps} steps x batch {s.BatchSize} in {s.Decode.TotalSeconds:F2} s ({s.DecodeTokensPerSecond:F1} tokens/s, {s.DecodeMillisecondsPerStep:F2} ms/step)");
            return 0;
        }
    }

    /// <summary>FlexGen's greedy block generation with the model offloaded by --offload.</summary>
    static int Offloaded(ParseResult r, CommonOptions common, OffloadFlags offload, List<string> texts, GenerationOptions options)
    {
        if (options.Temperature > 0 || options.CachePolicy is { Name: not "full" } or { Bits: not 16 })
            throw new ArgumentException("--offload generates greedily with the full 16-bit cache (FlexGen's setting): drop --temperature and the --kv-* flags.");
        var (folder, load) = common.LoadOptions(r);
        var tokenizer = Tern.Tokenization.TernTokenizer.Load(folder);
        var ids = texts.Select(t => tokenizer.Encode(t)).ToArray();
        var device = ComputeOptions.ResolveDevice(load.Device);
        var (offloadOptions, prediction) = offload.Resolve(r, folder, load.DType, device, ids.Max(p => p.Count), options.MaxNewTokens, Console.Error);
        OffloadFlags.Print(Console.Error, offloadOptions.Policy, prediction);
        using var model = OffloadedModel.Load(folder, load, offloadOptions);
        var result = model.Generate(ids, options.MaxNewTokens);
        for (int i = 0; i < texts.Count; i++)
        {
            if (texts.Count > 1) Console.WriteLine($"--- [{i}]");
            Console.WriteLine(texts[i] + tokenizer.Decode(result.Tokens[i]));
        }
        Console.Error.WriteLine($"offloaded: prefill {result.Prefill.TotalSeconds:F2} s, decode {result.Decode.TotalSeconds:F2} s, {result.TokensPerSecond:F2} tokens/s " +
            $"(predicted {prediction.TokensPerSecond:F2}); peak GPU placement {Units.Bytes(model.PeakGpuBytes)}");
        return 0;
    }
}
