using System.CommandLine;
using Tern.Caching;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Offloading;
using Tern.Prompting;

namespace Tern.Cli.Commands;

/// <summary><c>--soft-prompt FILE</c>: a prompt trained by <c>tern prompt train</c>, placed before every input.</summary>
internal sealed class SoftPromptFlag
{
    public Option<FileInfo?> File { get; } = new("--soft-prompt") { Description = "Soft prompt (safetensors from 'tern prompt train') placed before every input." };

    public void AddTo(Command command) => command.Options.Add(File);

    /// <summary>Refuses the flag next to <c>--offload</c> under a KV policy other than the full cache, before anything loads
    /// (the prompted model would refuse it too): an offloaded policy cache does not start from the prompt's entries.</summary>
    public void RefuseWithOffload(ParseResult r, KvCacheConfig? cache)
    {
        if (r.GetValue(File) is not null && OffloadedModel.NeedsResidentCache(cache))
            throw new UsageException("--soft-prompt with --offload runs the full KV cache (an offloaded policy cache does not start from the prompt's entries); " +
                "drop --kv-policy and --kv-bits, or --offload.");
    }

    /// <summary>Why <c>tern serve</c> takes <c>--soft-prompt</c> and <c>--offload</c> apart.</summary>
    internal const string WithOffload = "tern serve --soft-prompt runs a model in memory: the server copies a prompt's prefilled keys and values into each request's cache, " +
        "which an offloaded model keeps where its policy places them. Drop one of --soft-prompt and --offload ('tern generate' and 'tern bench' take both).";

    /// <summary>Positions the prompt file takes (0 without the flag or without a readable prompt, which <see cref="Load(ParseResult, long)"/>
    /// then reports), from its header before a model loads: an offload policy plans for them.</summary>
    public int Length(ParseResult r)
    {
        if (r.GetValue(File) is not { Exists: true } file) return 0;
        try
        {
            using var header = SafetensorsFile.Open(file.FullName);
            return header.TryGetInfo(SoftPrompt.TensorName, out var info) && info.Shape.Count == 2 ? (int)info.Shape[0] : 0;
        }
        catch (CheckpointException)
        {
            return 0;
        }
    }

    /// <summary>The prompt given, checked against <paramref name="model"/>; null without the flag.</summary>
    public SoftPrompt? Load(ParseResult r, CausalLanguageModel model) => Load(r, model.TokenEmbeddingWidth);

    /// <summary>The prompt given, checked against a model of that token-embedding width (an offloaded one's); null without the flag.</summary>
    public SoftPrompt? Load(ParseResult r, long tokenEmbeddingWidth) =>
        r.GetValue(File) is { } file ? SoftPrompt.Load(file.FullName, tokenEmbeddingWidth) : null;
}

/// <summary><c>tern serve --soft-prompt [NAME=]FILE</c>, repeated: the prompts a server holds. An unnamed one runs before every
/// request that names none; a named one runs before the requests whose body field <c>soft_prompt</c> names it.</summary>
internal sealed class ServedSoftPromptsFlag
{
    public Option<string[]> Values { get; } = new("--soft-prompt")
    {
        Description = "Soft prompt (safetensors from 'tern prompt train') placed before requests: FILE for every request that names none, " +
            "NAME=FILE (repeatable) for requests whose body field soft_prompt names it. Its keys and values are computed once and copied into each request's cache.",
        Arity = ArgumentArity.ZeroOrMore,
    };

    public void AddTo(Command command) => command.Options.Add(Values);

    /// <summary>True when the flag is given.</summary>
    public bool Given(ParseResult r) => r.GetValue(Values) is { Length: > 0 };

    /// <summary>Refuses the flag next to <c>--offload</c>, before anything loads (the engine would refuse it too).</summary>
    public void RefuseWithOffload(ParseResult r)
    {
        if (Given(r)) throw new UsageException(SoftPromptFlag.WithOffload);
    }

    /// <summary>The prompts by name ("" for the unnamed one), each checked against <paramref name="model"/>; empty without the
    /// flag. The caller disposes them.</summary>
    public Dictionary<string, SoftPrompt> Load(ParseResult r, CausalLanguageModel model)
    {
        var prompts = new Dictionary<string, SoftPrompt>();
        try
        {
            foreach (string value in r.GetValue(Values) ?? Array.Empty<string>())
            {
                // NAME=FILE unless the whole value is a file (a path may hold '=').
                int eq = value.IndexOf('=');
                var (name, path) = eq > 0 && !System.IO.File.Exists(value) ? (value[..eq], value[(eq + 1)..]) : ("", value);
                if (prompts.ContainsKey(name))
                    throw new UsageException(name.Length == 0 ? "--soft-prompt FILE is given twice; name all but one (NAME=FILE)."
                        : $"--soft-prompt names '{name}' twice; give each prompt its own name.");
                prompts[name] = SoftPrompt.Load(Path.GetFullPath(path), model);
            }
        }
        catch
        {
            foreach (var prompt in prompts.Values) prompt.Dispose();
            throw;
        }
        return prompts;
    }
}
