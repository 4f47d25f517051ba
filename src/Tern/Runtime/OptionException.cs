namespace Tern.Runtime;

/// <summary>
/// An option value, or a combination of options, that cannot work. The message is a template in which the options are
/// <see cref="TernOption"/> arguments, so that each front end names them in its own words (<see cref="Render(Func{TernOption, string})"/>: the CLI as
/// flags, the server as request fields); <see cref="Exception.Message"/> names them neutrally (<see cref="TernOption.Name"/>).
/// </summary>
public sealed class OptionException : ArgumentException
{
    readonly FormattableString template;

    /// <summary>An error whose <paramref name="message"/> interpolates the options it is about, the one to blame first:
    /// <c>$"{TernOption.KvSink} {sinks} must be smaller than {TernOption.KvBudget} {budget}."</c></summary>
    public OptionException(FormattableString message) : base(Render(message, option => option.Name))
    {
        template = message;
        Options = message.GetArguments().OfType<TernOption>().Distinct().ToArray();
    }

    /// <summary>The options the message names, in order; there is at least one.</summary>
    public IReadOnlyList<TernOption> Options { get; }

    /// <summary>The option to blame: the first the message names.</summary>
    public TernOption Option => Options[0];

    /// <summary>The message with every option named by <paramref name="name"/>.</summary>
    public string Render(Func<TernOption, string> name) => Render(template, name);

    static string Render(FormattableString template, Func<TernOption, string> name) =>
        string.Format(template.Format, template.GetArguments().Select(a => a is TernOption option ? name(option) : a).ToArray());
}
