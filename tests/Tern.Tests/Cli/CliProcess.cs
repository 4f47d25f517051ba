using Tern.Cli;

namespace Tern.Tests.Cli;

/// <summary>Runs the command line in process, capturing what it writes to standard output and standard error.</summary>
internal static class CliProcess
{
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var (previousOut, previousError) = (Console.Out, Console.Error);
        Console.SetOut(output);
        Console.SetError(error);
        try
        {
            return (Program.Run(args, error), output.ToString(), error.ToString());
        }
        finally
        {
            Console.SetOut(previousOut);
            Console.SetError(previousError);
        }
    }

    /// <summary>The exit code and the non-empty lines written to standard error.</summary>
    public static (int Code, string[] Lines) Errors(params string[] args)
    {
        var (code, _, error) = Run(args);
        return (code, error.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToArray());
    }
}
