using System.CommandLine;
using System.Globalization;
using Tern.Prompting;

namespace Tern.Cli.Commands;

/// <summary><c>tern prompt train</c>: learn a soft prompt for a frozen (e.g. compressed) model.</summary>
internal static class PromptCommand
{
    public static Command Create() => new("prompt", "Soft prompts (Compress, then Prompt): vectors before every input that recover a compressed model's quality.")
    {
        Train(),
    };

    static Command Train()
    {
        var d = new SoftPromptTrainingOptions();
        var common = new CommonOptions();
        var text = new Option<FileInfo>("--text") { Description = "UTF-8 training text (random windows are drawn from it).", Required = true };
        var valid = new Option<FileInfo?>("--valid-text") { Description = "UTF-8 validation text: scored every --eval-every steps, the best prompt kept." };
        var maxTrain = new Option<int>("--max-train-tokens") { Description = "Use only the first N tokens of --text (0 = all).", DefaultValueFactory = _ => 0 };
        var tokens = new Option<int>("--tokens") { Description = "Prompt vectors n (the released LLaMA-7B script: 100).", DefaultValueFactory = _ => d.Tokens };
        var lr = new Option<double>("--lr") { Description = "AdamW peak learning rate.", DefaultValueFactory = _ => d.LearningRate };
        var wd = new Option<double>("--weight-decay") { Description = "AdamW weight decay.", DefaultValueFactory = _ => d.WeightDecay };
        var warmup = new Option<int>("--warmup") { Description = "Linear warm-up steps (then linear decay to 0).", DefaultValueFactory = _ => d.WarmupSteps };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps.", DefaultValueFactory = _ => d.Steps };
        var batch = new Option<int>("--batch-size") { Description = "Sequences per step.", DefaultValueFactory = _ => d.BatchSize };
        var seq = new Option<int?>("--seq-len") { Description = $"Text tokens per sequence (default {d.SequenceLength}, cut so that prompt + sequence fit the model's positions)." };
        var clip = new Option<double>("--clip") { Description = "Gradient-norm clip (0: none).", DefaultValueFactory = _ => d.GradientClip };
        var seed = new Option<int>("--seed") { Description = "Seed of the training windows.", DefaultValueFactory = _ => d.Seed };
        var evalEvery = new Option<int>("--eval-every") { Description = "Validate every N steps (and after the last).", DefaultValueFactory = _ => d.EvalEvery };
        var evalTokens = new Option<int>("--eval-tokens") { Description = "Validation tokens scored each time.", DefaultValueFactory = _ => d.EvalTokens };
        var init = new Option<FileInfo?>("--init") { Description = "Start from this prompt file instead of the first n vocabulary embeddings." };
        var output = new Option<string>("--output", "-o") { Description = "Prompt file to write (safetensors).", Required = true };
        var command = new Command("train", "Train a soft prompt with the model frozen: next-token loss on the text, prompt positions ignored; AdamW on the prompt only.")
        {
            text, valid, maxTrain, tokens, lr, wd, warmup, steps, batch, seq, clip, seed, evalEvery, evalTokens, init, output,
        };
        common.AddTo(command);
        command.SetAction((r, cancellation) =>
        {
            var trainFile = r.GetValue(text)!;
            var validFile = r.GetValue(valid);
            var (model, tokenizer, folder) = common.Load(r, needTokenizer: true);
            using (model)
            {
                using var start = r.GetValue(init) is { } initFile ? SoftPrompt.Load(initFile.FullName, model) : null;
                int n = start?.Length ?? r.GetValue(tokens);
                var options = new SoftPromptTrainingOptions
                {
                    Tokens = n, LearningRate = r.GetValue(lr), WeightDecay = r.GetValue(wd), WarmupSteps = r.GetValue(warmup), Steps = r.GetValue(steps),
                    BatchSize = r.GetValue(batch), SequenceLength = r.GetValue(seq) ?? Math.Min(d.SequenceLength, model.Info.MaxPositions - n),
                    GradientClip = r.GetValue(clip), Seed = r.GetValue(seed), EvalEvery = r.GetValue(evalEvery), EvalTokens = r.GetValue(evalTokens),
                };
                IReadOnlyList<int> train = tokenizer!.Encode(TextFiles.Read(trainFile.FullName, "--text"), addSpecialTokens: false);
                if (r.GetValue(maxTrain) is > 0 and var cap && train.Count > cap) train = train.Take(cap).ToArray();
                var validTokens = validFile is null ? null
                    : tokenizer.Encode(TextFiles.Read(validFile.FullName, "--valid-text"), addSpecialTokens: false).Take(options.EvalTokens).ToArray();
                Console.Error.WriteLine($"{folder}: prompt of {n} × {model.TokenEmbeddingWidth}, {options.Steps} steps of {options.BatchSize} × {options.SequenceLength} tokens " +
                    $"from {train.Count:N0} training tokens{(validTokens is null ? "" : $", validation on {validTokens.Length:N0} tokens every {options.EvalEvery} steps")}");
                var result = SoftPromptTrainer.Train(model, train, validTokens, options, start, new SyncProgress<SoftPromptProgress>(p =>
                {
                    if (p.ValidNll is { } v || p.Step % 10 == 0 || p.Step == 1)
                        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"step {p.Step,6}  loss {p.Loss:F4}  lr {p.LearningRate:E2}{(p.ValidNll is { } nll ? $"  valid NLL {nll:F4} (ppl {Math.Exp(nll):F3})" : "")}  {p.Seconds:F0} s"));
                }), cancellation);
                using (result.Prompt)
                {
                    string path = r.GetValue(output)!;
                    result.Prompt.Save(path, new Dictionary<string, string> { ["model"] = Path.GetFileName(Path.GetFullPath(folder)), ["train_text"] = trainFile.Name });
                    Console.WriteLine($"wrote {Path.GetFullPath(path)}: {n} vectors, best step {result.BestStep}" +
                        (result.BestValidNll is { } best ? $" (valid NLL {best:F4}, ppl {Math.Exp(best):F3})" : ""));
                }
            }
            return Task.FromResult(0);
        });
        return command;
    }
}
