using System.CommandLine;
using Tern.Models;
using Tern.Offloading;
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
        var sparsity = Make(r, common, requested, everyToken, (options, dummy) =>
            dummy ? DejaVuSparsity.ForTiming(model, options) : DejaVuSparsity.Load(model, common.ResolveModelFolder(r), options));
        if (sparsity is not null) model.Sparsity = sparsity;
        return sparsity;
    }

    /// <summary>Puts the sparsity the flag asks for on an offloaded <paramref name="model"/>: every GPU batch of a step selects its
    /// own neurons and heads, stage by stage.</summary>
    public DejaVuSparsity? Apply(ParseResult r, CommonOptions common, OffloadedModel model)
    {
        var sparsity = Make(r, common, Read(r), everyToken: false, (options, dummy) =>
            dummy ? DejaVuSparsity.ForTiming(model, options) : DejaVuSparsity.Load(model, common.ResolveModelFolder(r), options));
        if (sparsity is not null) model.Sparsity = sparsity;
        return sparsity;
    }

    static DejaVuSparsity? Make(ParseResult r, CommonOptions common, SparsityOptions? requested, bool everyToken, Func<SparsityOptions, bool, DejaVuSparsity> make)
    {
        if (requested is not { } options) return null;
        options = options with { EveryToken = everyToken };
        bool dummy = r.GetValue(common.Dummy);
        if (dummy && options.Rule == SelectionRule.Predicted)
            Console.Error.WriteLine("note: --dummy weights: the predictors are untrained ones of the default ranks (their cost, not their choices)");
        var sparsity = make(options, dummy);
        Console.Error.WriteLine($"sparsity: {sparsity.ActiveNeurons} of each layer's {sparsity.Neurons} MLP neurons and " +
            $"{sparsity.ActiveHeads} of its {sparsity.Heads} heads per {(everyToken ? "token" : "decode token")} ({options.Rule.ToString().ToLowerInvariant()})");
        return sparsity;
    }
}
