using System.CommandLine;
using Tern.Cli.Commands;

namespace Tern.Cli;

/// <summary>Entry point of the <c>tern</c> command.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("Tern: run large language models cheaply (Hugging Face checkpoints on CPU and CUDA).")
        {
            GenerateCommand.Create(),
            ChatCommand.Create(),
            InfoCommand.Create(),
            BenchCommand.Create(),
            EvalCommand.Create(),
            TokenizerCommand.Create(),
            TrainCommand.Create(),
            ExportCommand.Create(),
        };
        ParseResult parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            // One clear line per problem, then where to look; never a stack trace.
            foreach (var error in parsed.Errors) Console.Error.WriteLine($"tern: {error.Message}");
            string command = parsed.CommandResult.Command == root ? "tern" : $"tern {parsed.CommandResult.Command.Name}";
            Console.Error.WriteLine($"Run '{command} --help' for the options.");
            return 2;
        }
        try
        {
            return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (CliErrors.IsUserError(e))
        {
            Console.Error.WriteLine($"tern: {e.Message}");
            return 1;
        }
        catch (AggregateException e) when (e.InnerExceptions.Count == 1 && CliErrors.IsUserError(e.InnerException!))
        {
            Console.Error.WriteLine($"tern: {e.InnerException!.Message}");
            return 1;
        }
    }
}
