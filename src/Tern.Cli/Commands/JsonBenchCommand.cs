using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Tern.Generation;
using Tern.Models;
using Tern.Runtime;
using Tern.Structured;

namespace Tern.Cli.Commands;

/// <summary><c>tern bench json</c>: the cost per token of constrained decoding (<see cref="JsonConstraint"/>) against the same
/// generation unconstrained — masks computed (a fresh constraint: every state met for the first time) and cached (the same
/// run again) — printed as a table.</summary>
internal static class JsonBenchCommand
{
    /// <summary>A schema of the kind structured-output users send: nested object, array, enum, numbers, required fields.</summary>
    const string SampleSchema = """
        {"type":"object","properties":{
          "name":{"type":"string"},"age":{"type":"integer"},"score":{"type":"number"},
          "tags":{"type":"array","items":{"type":"string"},"maxItems":4},
          "kind":{"enum":["person","place","thing"]},
          "address":{"type":"object","properties":{"city":{"type":"string"},"zip":{"type":"string"}},"required":["city"],"additionalProperties":false}},
         "required":["name","age","kind","address"],"additionalProperties":false}
        """;

    public static Command Create()
    {
        var common = new CommonOptions();
        var batches = new Option<int[]>("--batch", "-b") { Description = "Batch sizes (comma-separated).", DefaultValueFactory = _ => new[] { 1, 8 }, CustomParser = BenchCommand.ParseInts };
        var newTokens = new Option<int>("--new-tokens", "-n") { Description = "Tokens generated per sequence.", DefaultValueFactory = _ => 128 };
        var schemaFile = new Option<FileInfo?>("--json-schema") { Description = "The schema to constrain to (default: a sample with nested object, array, enum and numbers)." };
        var command = new Command("json", "Cost per token of JSON-schema constrained decoding against unconstrained decoding.") { batches, newTokens, schemaFile };
        common.AddTo(command);
        command.SetAction(r => Run(r, common, batches, newTokens, schemaFile));
        return command;
    }

    static int Run(ParseResult r, CommonOptions common, Option<int[]> batchesOption, Option<int> newTokensOption, Option<FileInfo?> schemaOption)
    {
        int steps = r.GetValue(newTokensOption);
        if (steps < 2) throw new UsageException("--new-tokens must be at least 2.");
        string schemaText = r.GetValue(schemaOption) is { } file ? TextFiles.Read(file.FullName, "--json-schema") : SampleSchema;
        using var schema = JsonDocument.Parse(schemaText);
        var (model, tokenizer, folder) = common.Load(r, needTokenizer: true);
        using (model)
        {
            var generator = new Generator(model, tokenizer);
            Console.WriteLine($"{DeviceReport.Name(model.Device)} | {folder} {model.Info.ParameterCount / 1e6:F1}M params, vocabulary {model.Info.VocabSize} | {model.DType.ShortName()} | at most {steps} tokens per sequence, sampled (unconstrained runs ignore EOS; constrained ones end with their document)");
            Console.WriteLine($"{"batch",5} {"unconstrained",14} {"masks computed",15} {"(host)",8} {"masks cached",13} {"(host)",8} {"cached overhead",16} {"states",7}   (ms per decode step, best of 3)");
            foreach (int batch in r.GetValue(batchesOption)!)
            {
                var prompts = Enumerable.Range(0, batch).Select(i => tokenizer!.Encode($"Record {i} as JSON:")).ToArray();
                var plain = new GenerationOptions { MaxNewTokens = steps, IgnoreEos = true, Temperature = 1, Seed = 1 };
                WarmUp.UntilSteady(() => generator.GenerateTokens(prompts, plain with { MaxNewTokens = 3 }));
                double unconstrained = Enumerable.Range(0, 3).Min(_ => generator.GenerateTokens(prompts, plain).Stats.DecodeMillisecondsPerStep);
                // A constraint of its own computes each mask once (its first run), then finds them cached (the runs after). A
                // sequence ends with its document (the mask then allows only EOS), so constrained runs may step less; the cost is per step.
                JsonConstraint constraint = null!;
                var cold = Enumerable.Range(0, 3).Select(_ =>
                {
                    constraint = JsonConstraint.ForSchema(schema.RootElement, tokenizer!, shareMasks: false);
                    return Measure(generator, prompts, plain with { Constraint = constraint, IgnoreEos = false }, constraint);
                }).MinBy(m => m.Step);
                var constrained = plain with { Constraint = constraint, IgnoreEos = false };
                var warm = Enumerable.Range(0, 3).Select(_ => Measure(generator, prompts, constrained, constraint)).MinBy(m => m.Step);
                Console.WriteLine($"{batch,5} {unconstrained,14:F3} {cold.Step,15:F3} {cold.Host,8:F3} {warm.Step,13:F3} {warm.Host,8:F3} {(warm.Step / unconstrained - 1) * 100,15:F0}% {constraint.CacheStats.Misses,7}");
            }
            return 0;
        }
    }

    /// <summary>Milliseconds per decode step (prefill excluded) of one constrained generation, and of them the constraint's
    /// host time (per draw).</summary>
    static (double Step, double Host) Measure(Generator generator, IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions options, JsonConstraint constraint)
    {
        var before = constraint.MaskTime;
        var stats = generator.GenerateTokens(prompts, options).Stats;
        return (stats.DecodeMillisecondsPerStep, (constraint.MaskTime - before).TotalMilliseconds / (stats.DecodeSteps + 1));
    }
}
