using Tern.Checkpoints;
using Tern.Tokenization;

namespace Tern.Cli.Commands;

/// <summary>Which exceptions are the user's input (reported in one line) rather than bugs (reported with a trace).</summary>
internal static class CliErrors
{
    public static bool IsUserError(Exception e) => e is CheckpointException or TokenizerException or ArgumentException
        or InvalidOperationException or FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException
        or OperationCanceledException or IOException or NotSupportedException;
}
