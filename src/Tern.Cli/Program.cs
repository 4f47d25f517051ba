using System.CommandLine;
using Tern.Cli.Commands;

namespace Tern.Cli;

/// <summary>Entry point of the <c>tern</c> command.</summary>
public static class Program
{
    public static int Main(string[] args) => Run(args, Console.Error);

    /// <summary>Runs the command line; problems go to <paramref name="error"/>.</summary>
    internal static int Run(string[] args, TextWriter error)
    {
        var root = new RootCommand("Tern: run large language models cheaply (Hugging Face checkpoints on CPU and CUDA).")
        {
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
        };
        ParseResult parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            // One clear line per problem, then where to look; never a stack trace.
            foreach (var problem in parsed.Errors) error.WriteLine($"tern: {problem.Message}");
            string command = parsed.CommandResult.Command == root ? "tern" : $"tern {parsed.CommandResult.Command.Name}";
            error.WriteLine($"Run '{command} --help' for the options.");
            return 2;
        }
        try
        {
            // Ctrl+C / SIGTERM cancel a command's token and, after two seconds, end the process; serve drains and chat stops a
            // reply on their own.
            var configuration = new InvocationConfiguration { EnableDefaultExceptionHandler = false };
            if (parsed.CommandResult.Command.Name is ServeCommand.Name or ChatCommand.Name) configuration.ProcessTerminationTimeout = null;
            return parsed.Invoke(configuration);
        }
        catch (Exception e) when (CliErrors.IsUserError(e))
        {
            error.WriteLine($"tern: {CliErrors.Message(e)}");
            return 1;
        }
        catch (AggregateException e) when (e.InnerExceptions.Count == 1 && CliErrors.IsUserError(e.InnerException!))
        {
            error.WriteLine($"tern: {CliErrors.Message(e.InnerException!)}");
            return 1;
        }
    }
}
