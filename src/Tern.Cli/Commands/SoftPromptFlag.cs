using System.CommandLine;
using Tern.Models;
using Tern.Prompting;

namespace Tern.Cli.Commands;

/// <summary><c>--soft-prompt FILE</c>: a prompt trained by <c>tern prompt train</c>, placed before every input.</summary>
internal sealed class SoftPromptFlag
{
    public Option<FileInfo?> File { get; } = new("--soft-prompt") { Description = "Soft prompt (safetensors from 'tern prompt train') placed before every input." };

    public void AddTo(Command command) => command.Options.Add(File);

    /// <summary>Refuses the flag next to <c>--offload</c>: an offloaded model's runners do not start from a prefilled prompt.</summary>
    public void RefuseWithOffload(ParseResult r)
    {
        if (r.GetValue(File) is not null) throw new UsageException("--soft-prompt does not run with --offload yet; drop one of them.");
    }

    /// <summary>The prompt given, checked against <paramref name="model"/>; null without the flag.</summary>
    public SoftPrompt? Load(ParseResult r, CausalLanguageModel model) =>
        r.GetValue(File) is { } file ? SoftPrompt.Load(file.FullName, model) : null;
}
