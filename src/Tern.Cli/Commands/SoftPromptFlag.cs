using System.CommandLine;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Prompting;

namespace Tern.Cli.Commands;

/// <summary><c>--soft-prompt FILE</c>: a prompt trained by <c>tern prompt train</c>, placed before every input.</summary>
internal sealed class SoftPromptFlag
{
    public Option<FileInfo?> File { get; } = new("--soft-prompt") { Description = "Soft prompt (safetensors from 'tern prompt train') placed before every input." };

    public void AddTo(Command command) => command.Options.Add(File);

    /// <summary>Positions the prompt file takes (0 without the flag or without a readable prompt, which <see cref="Load(ParseResult, long)"/>
    /// then reports), from its header before a model loads: an offload policy plans for them.</summary>
    public int Length(ParseResult r) => r.GetValue(File) is { } file ? HeaderLength(file.FullName) : 0;

    /// <summary>Positions the prompt file at <paramref name="path"/> takes, from its header (0 when it is missing or not a
    /// prompt: loading it reports why).</summary>
    internal static int HeaderLength(string path)
    {
        if (!System.IO.File.Exists(path)) return 0;
        try
        {
            using var header = SafetensorsFile.Open(path);
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
            "NAME=FILE (repeatable) for requests whose body field soft_prompt names it (\"none\": no prompt). Its keys and values are computed once and copied into each request's cache " +
            "(with --offload: with each block, of one prompt's requests).",
        Arity = ArgumentArity.ZeroOrMore,
    };

    public void AddTo(Command command) => command.Options.Add(Values);

    /// <summary>True when the flag is given.</summary>
    public bool Given(ParseResult r) => r.GetValue(Values) is { Length: > 0 };

    /// <summary>Positions the longest prompt takes (0 without the flag), from the files' headers before a model loads: an
    /// offload policy plans for them (a block's caches hold a prompt's entries before the text).</summary>
    public int LongestLength(ParseResult r) => Files(r).Select(f => SoftPromptFlag.HeaderLength(f.Path)).DefaultIfEmpty(0).Max();

    /// <summary>The values given, as (name, full path): NAME=FILE unless the whole value is a file (a path may hold '=').</summary>
    IEnumerable<(string Name, string Path)> Files(ParseResult r) => (r.GetValue(Values) ?? Array.Empty<string>()).Select(value =>
    {
        int eq = value.IndexOf('=');
        var (name, path) = eq > 0 && !System.IO.File.Exists(value) ? (value[..eq], value[(eq + 1)..]) : ("", value);
        return (name, Path.GetFullPath(path));
    });

    /// <summary>The prompts by name ("" for the unnamed one), each checked against a model of that token-embedding width (in
    /// memory or offloaded); empty without the flag. The caller disposes them.</summary>
    public Dictionary<string, SoftPrompt> Load(ParseResult r, long tokenEmbeddingWidth)
    {
        var prompts = new Dictionary<string, SoftPrompt>();
        try
        {
            foreach (var (name, path) in Files(r))
            {
                if (prompts.ContainsKey(name))
                    throw new UsageException(name.Length == 0 ? "--soft-prompt FILE is given twice; name all but one (NAME=FILE)."
                        : $"--soft-prompt names '{name}' twice; give each prompt its own name.");
                prompts[name] = SoftPrompt.Load(path, tokenEmbeddingWidth);
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
