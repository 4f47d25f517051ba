using System.CommandLine;
using Tern.Caching;

namespace Tern.Cli.Commands;

/// <summary>The KV-cache policy flags of <c>tern generate</c> and <c>tern chat</c>, checked while parsing (one line, exit 2).</summary>
internal sealed class KvPolicyFlags
{
    // Defaults are applied in KvPolicyOptions.Parse: a command validator sees unset options without their default values.
    public Option<string?> Policy { get; } = new("--kv-policy")
    {
        Description = "KV-cache policy: full (default), window, window-recompute, sink (StreamingLLM) or h2o.",
    };
    public Option<string?> Budget { get; } = new("--kv-budget")
    {
        Description = "Cache entries per sequence, layer and head: a token count (512) or a ratio of prompt + new tokens (0.2).",
    };
    public Option<int?> Sinks { get; } = new("--kv-sink") { Description = $"Attention sinks kept by --kv-policy sink (default {KvPolicyOptions.DefaultSinks})." };
    public Option<string?> Recent { get; } = new("--kv-recent")
    {
        Description = "Recent window of --kv-policy h2o, count or ratio (default half the budget; the rest holds heavy hitters).",
    };
    public Option<int?> Bits { get; } = new("--kv-bits") { Description = "Bits per cached element: 16 (default), or 8/4 group-quantized." };
    public Option<int?> EvictEvery { get; } = new("--kv-evict-every")
    {
        Description = "sink, window, h2o: evict once the cache overruns its budget by N tokens, all at once (default 1: after every step).",
    };

    public void AddTo(Command command)
    {
        foreach (var o in new Option[] { Policy, Budget, Sinks, Recent, Bits, EvictEvery }) command.Options.Add(o);
        command.Validators.Add(result =>
        {
            try
            {
                KvPolicyOptions.Parse(result.GetValue(Policy), result.GetValue(Budget), result.GetValue(Sinks), result.GetValue(Recent), result.GetValue(Bits), result.GetValue(EvictEvery)).Validate();
            }
            catch (ArgumentException e)
            {
                result.AddError(CliErrors.Message(e));
            }
        });
    }

    /// <summary>The KV flags given on the command line, as they were written (for a command line to repeat).</summary>
    public static IEnumerable<string> Echo(ParseResult r, KvPolicyFlags kv)
    {
        foreach (var o in new Option[] { kv.Policy, kv.Budget, kv.Sinks, kv.Recent, kv.Bits, kv.EvictEvery })
            if (r.GetResult(o) is { Implicit: false } given && given.Tokens.Count > 0) yield return $"{o.Name} {given.Tokens[0].Value}";
    }

    /// <summary>The policy the flags describe (validated by the parser already).</summary>
    public KvPolicyOptions Read(ParseResult r) =>
        KvPolicyOptions.Parse(r.GetValue(Policy), r.GetValue(Budget), r.GetValue(Sinks), r.GetValue(Recent), r.GetValue(Bits), r.GetValue(EvictEvery));
}
