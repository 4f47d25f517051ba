using System.CommandLine;
using System.Diagnostics;
using Tern.Evaluation;

namespace Tern.Cli.Commands;

/// <summary><c>tern eval ppl</c>: perplexity of a long text with a sliding window.</summary>
internal static class EvalCommand
{
    public static Command Create()
    {
        var common = new CommonOptions();
        var text = new Option<FileInfo>("--text") { Description = "UTF-8 text file to score.", Required = true };
        var window = new Option<int>("--window") { Description = "Tokens per window (default: the model's context)." };
        var stride = new Option<int>("--stride") { Description = "Tokens each window moves, less than the window (default: half of it)." };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Score only the first N tokens of the text (0 = all)." };
        var softPrompt = new SoftPromptFlag();
        var ppl = new Command("ppl", "Perplexity of a text: sliding windows, every token after the first scored exactly once.") { text, window, stride, maxTokens };
        common.AddTo(ppl);
        var sparsity = new SparsityFlags();
        sparsity.AddTo(ppl);
        softPrompt.AddTo(ppl);
        ppl.SetAction((r, cancellation) => Task.FromResult(Perplexity(r, common, sparsity, softPrompt, text, window, stride, maxTokens, cancellation)));
        return new Command("eval", "Evaluate a model.") { ppl, EvalPolicyCommands.Stream(), EvalPolicyCommands.Budget(), EvalPolicyCommands.Choice(), EvalPolicyCommands.Sinks(), EvalPolicyCommands.Plot(), SparsityCommand.Evaluate() };
    }

    static int Perplexity(ParseResult r, CommonOptions common, SparsityFlags sparsity, SoftPromptFlag softPrompt, Option<FileInfo> textOption, Option<int> window, Option<int> stride,
        Option<int> maxTokens, CancellationToken cancellation)
    {
        var file = r.GetValue(textOption)!;
        string text = TextFiles.Read(file.FullName, "--text");
        var (model, tokenizer, folder) = common.Load(r, needTokenizer: true);
        using (model)
        using (sparsity.Apply(r, common, model, everyToken: true))
        {
            using var prompt = softPrompt.Load(r, model);
            var clock = Stopwatch.StartNew();
            IReadOnlyList<int> tokens = tokenizer!.Encode(text, addSpecialTokens: false);
            int limit = r.GetValue(maxTokens);
            if (limit > 0 && tokens.Count > limit) tokens = tokens.Take(limit).ToArray();
            var progress = new ConsoleProgress("scoring");
            var result = Tern.Evaluation.Perplexity.Evaluate(model, tokens,
                new PerplexityOptions { Window = r.GetValue(window), Stride = r.GetValue(stride) }, prompt, progress, cancellation);
            Console.Error.WriteLine();
            Console.WriteLine($"{folder}: perplexity {result.Perplexity:F3} on {file.Name} (mean NLL {result.MeanNll:F4} nats over " +
                $"{result.ScoredTokens:N0} tokens; window {result.Window}, stride {result.Stride}, {result.Windows} windows; {clock.Elapsed.TotalSeconds:F1} s)");
            if (prompt is not null)
                Console.WriteLine($"  with a soft prompt of {prompt.Length} vectors; the released Compress-Then-Prompt formula would report " +
                    $"{result.ReleasedPerplexity:F3} (mean NLL {result.ReleasedMeanNll:F4}: losses averaged over prompt positions too)");
            return 0;
        }
    }
}
