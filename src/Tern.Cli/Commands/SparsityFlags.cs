using System.CommandLine;
using Tern.Models;
using Tern.Runtime;
using Tern.Sparsity;

namespace Tern.Cli.Commands;

/// <summary>DejaVu's <c>--sparsity</c> flag of the commands that run a loaded model (generate, bench, serve, eval ppl), checked
/// while parsing (one line, exit 2).</summary>
internal sealed class SparsityFlags
{
    public Option<string?> Spec { get; } = new("--sparsity")
    {
        Description = "DejaVu contextual sparsity of decode steps: mlp=FRACTION,heads=FRACTION[,rule=predicted|oracle|random][,seed=N], " +
            "either fraction optional (mlp= needs a ReLU MLP; heads= serves every architecture, keys and values of skipped heads still cached; " +
            "predicted reads the predictors of 'tern sparsity train' next to the model). Default: dense.",
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Spec);
        command.Validators.Add(result =>
        {
            if (result.GetValue(Spec) is not { } spec) return;
            try
            {
                SparsityOptions.Parse(spec);
            }
            catch (ArgumentException e)
            {
                result.AddError(CliErrors.Message(e));
            }
        });
    }

    /// <summary>Refuses the flag next to <c>--offload</c>: an offloaded model's stages run dense.</summary>
    public void RefuseWithOffload(ParseResult r)
    {
        if (Read(r) is not null)
            throw new UsageException("--sparsity runs a model in memory; an offloaded model's stages run dense. Drop one of --sparsity and --offload.");
    }

    /// <summary>The options the flag describes, or null when it is not given (validated by the parser already).</summary>
    public SparsityOptions? Read(ParseResult r) => r.GetValue(Spec) is { } spec ? SparsityOptions.Parse(spec) : null;

    /// <summary>Puts the sparsity the flag asks for on <paramref name="model"/> (loaded by <paramref name="common"/>'s flags); the
    /// result (null when dense) owns the predictors it loaded. <paramref name="everyToken"/>: steps of several tokens (evaluation
    /// windows) are sparse too, each token choosing its neurons and heads, as DejaVu measures quality.</summary>
    public DejaVuSparsity? Apply(ParseResult r, CommonOptions common, CausalLanguageModel model, bool everyToken = false) =>
        Apply(r, common, model, Read(r), everyToken);

    /// <summary>Puts <paramref name="requested"/> (null: dense) on <paramref name="model"/>, as the flag would (a level of
    /// <c>tern bench --sparsity-sweep</c>).</summary>
    public static DejaVuSparsity? Apply(ParseResult r, CommonOptions common, CausalLanguageModel model, SparsityOptions? requested, bool everyToken = false)
    {
        if (requested is not { } options) return null;
        options = options with { EveryToken = everyToken };
        bool dummy = r.GetValue(common.Dummy);
        if (dummy && options.Rule == SelectionRule.Predicted)
            Console.Error.WriteLine("note: --dummy weights: the predictors are untrained ones of the default ranks (their cost, not their choices)");
        var sparsity = dummy ? DejaVuSparsity.ForTiming(model, options) : DejaVuSparsity.Load(model, common.ResolveModelFolder(r), options);
        model.Sparsity = sparsity;
        Console.Error.WriteLine($"sparsity: {sparsity.ActiveNeurons} of each layer's {ModelIdentity.Of(model.Config).IntermediateSize} MLP neurons and " +
            $"{sparsity.ActiveHeads} of its {model.Info.Heads} heads per {(everyToken ? "token" : "decode token")} ({options.Rule.ToString().ToLowerInvariant()})");
        return sparsity;
    }
}
