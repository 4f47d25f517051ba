using System.CommandLine;
using Tern.Generation;

namespace Tern.Cli.Commands;

/// <summary>The sampling flags, named as in Hugging Face <c>generate</c>.</summary>
internal sealed class SamplingOptions
{
    public Option<int> MaxNewTokens { get; } = new("--max-new-tokens", "-n") { Description = "Most tokens to generate per prompt.", DefaultValueFactory = _ => 128 };
    public Option<double> Temperature { get; } = new("--temperature") { Description = "Sampling temperature; 0 = greedy.", DefaultValueFactory = _ => 0.0 };
    public Option<int> TopK { get; } = new("--top-k") { Description = "Sample from the k most likely tokens; 0 = off." };
    public Option<double> TopP { get; } = new("--top-p") { Description = "Nucleus sampling mass; 1 = off.", DefaultValueFactory = _ => 1.0 };
    public Option<double> RepetitionPenalty { get; } = new("--repetition-penalty") { Description = "Penalty for repeated tokens; 1 = off.", DefaultValueFactory = _ => 1.0 };
    public Option<long?> Seed { get; } = new("--seed") { Description = "Sampler seed (reproducible sampling)." };
    public Option<string[]> Stop { get; } = new("--stop") { Description = "Stop string (repeatable).", AllowMultipleArgumentsPerToken = false };
    public Option<int[]> StopTokenIds { get; } = new("--stop-token-id") { Description = "Stop token id (repeatable; default: the model's EOS)." };
    public Option<bool> IgnoreEos { get; } = new("--ignore-eos") { Description = "Do not stop at end-of-sequence tokens." };
    public Option<bool> NoCudaGraphs { get; } = new("--no-cuda-graphs") { Description = "Run decode steps eagerly on CUDA (no graph replay)." };

    public void AddTo(Command command)
    {
        foreach (var o in new Option[] { MaxNewTokens, Temperature, TopK, TopP, RepetitionPenalty, Seed, Stop, StopTokenIds, IgnoreEos, NoCudaGraphs })
            command.Options.Add(o);
    }

    public GenerationOptions Read(ParseResult r)
    {
        int[] stopIds = r.GetValue(StopTokenIds) ?? Array.Empty<int>();
        var options = new GenerationOptions
        {
            MaxNewTokens = r.GetValue(MaxNewTokens),
            Temperature = r.GetValue(Temperature),
            TopK = r.GetValue(TopK),
            TopP = r.GetValue(TopP),
            RepetitionPenalty = r.GetValue(RepetitionPenalty),
            Seed = r.GetValue(Seed),
            StopStrings = r.GetValue(Stop) ?? Array.Empty<string>(),
            StopTokenIds = stopIds.Length > 0 ? stopIds : null,
            IgnoreEos = r.GetValue(IgnoreEos),
            UseCudaGraphs = !r.GetValue(NoCudaGraphs),
        };
        options.Validate();
        return options;
    }
}
