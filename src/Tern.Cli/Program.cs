using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Parsing;
using Tern.Cli.Commands;

namespace Tern.Cli;

/// <summary>Entry point of the <c>tern</c> command.</summary>
public static class Program
{
    public static int Main(string[] args) => Run(args, Console.Error);

    /// <summary>Runs the command line; problems go to <paramref name="error"/>. Exit codes: 0 done, 2 a usage error (unknown
    /// flag, bad or missing value: nothing ran), 1 a failure while running.</summary>
    internal static int Run(string[] args, TextWriter error)
    {
        // A plain command named "tern", not a RootCommand: that one is named after the executable (Tern.Cli) in help and usage.
        var root = new Command("tern", "Tern: run large language models cheaply (Hugging Face checkpoints on CPU and CUDA).")
        {
            new HelpOption(),
            new VersionOption(),
            GenerateCommand.Create(),
            ChatCommand.Create(),
            ServeCommand.Create(),
            InfoCommand.Create(),
            BenchCommand.Create(),
            EvalCommand.Create(),
            TokenizerCommand.Create(),
            TrainCommand.Create(),
            ExportCommand.Create(),
            OffloadCommand.Create(),
            SparsityCommand.Create(),
            CompressCommand.Create(),
            PromptCommand.Create(),
            LabCommand.Create(),
            DistillCommand.Create(),
        };
        ParseResult parsed = root.Parse(args);
        var problems = parsed.Errors.Select(e => e.Message).Concat(SwallowedFlags(parsed)).ToList();
        if (problems.Count > 0) return Usage(error, parsed, problems);
        try
        {
            // Ctrl+C / SIGTERM cancel a command's token and, after two seconds, end the process; serve drains and chat stops a
            // reply on their own.
            var configuration = new InvocationConfiguration { EnableDefaultExceptionHandler = false };
            if (parsed.CommandResult.Parent is CommandResult { Command: var parent } && parent == root
                && parsed.CommandResult.Command.Name is ServeCommand.Name or ChatCommand.Name) // not 'tern bench serve'
                configuration.ProcessTerminationTimeout = null;
            return parsed.Invoke(configuration);
        }
        catch (Exception e) when (Unwrap(e) is var inner && CliErrors.IsUsageError(inner))
        {
            return Usage(error, parsed, new[] { CliErrors.Message(inner) });
        }
        catch (Exception e) when (Unwrap(e) is var inner && CliErrors.IsUserError(inner))
        {
            error.WriteLine($"tern: {CliErrors.Message(inner)}");
            return 1;
        }
    }

    static Exception Unwrap(Exception e) => e is AggregateException { InnerExceptions.Count: 1 } aggregate ? aggregate.InnerException! : e;

    /// <summary>One clear line per problem, then where to look (the command as typed, e.g. <c>tern eval ppl</c>); never a
    /// stack trace. Exit code 2.</summary>
    static int Usage(TextWriter error, ParseResult parsed, IEnumerable<string> problems)
    {
        foreach (string problem in problems) error.WriteLine($"tern: {problem}");
        var names = new List<string>();
        for (SymbolResult? s = parsed.CommandResult; s is CommandResult c; s = c.Parent) names.Insert(0, c.Command.Name);
        error.WriteLine($"Run '{string.Join(' ', names)} --help' for the options.");
        return 2;
    }

    /// <summary>Flags a positional argument took as its value: <c>tern generate --bogus</c> made '--bogus' a prompt and
    /// <c>tern info --bogus</c> a folder. Refused like unknown flags elsewhere; after '--' a value may start with '-'.</summary>
    static IEnumerable<string> SwallowedFlags(ParseResult parsed)
    {
        var tokens = parsed.Tokens.ToList();
        int doubleDash = tokens.FindIndex(t => t.Type == TokenType.DoubleDash);
        for (SymbolResult? s = parsed.CommandResult; s is CommandResult command; s = command.Parent)
            foreach (var argument in command.Children.OfType<ArgumentResult>())
                foreach (var token in argument.Tokens)
                {
                    int at = tokens.FindIndex(t => ReferenceEquals(t, token));
                    bool literal = doubleDash >= 0 && at > doubleDash;
                    if (!literal && token.Value.Length > 1 && token.Value[0] == '-' && !token.Value.Any(char.IsWhiteSpace) && !double.TryParse(token.Value, out _))
                        yield return $"unrecognized option '{token.Value}' (to pass it as <{argument.Argument.Name}>, put it after '--').";
                }
    }
}
