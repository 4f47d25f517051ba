using Tern.Checkpoints;
using Tern.Runtime;
using Tern.Tokenization;

namespace Tern.Cli.Commands;

/// <summary>A bad flag value or combination found while a command runs (the parser finds most): exit code 2, like the parser's
/// errors, with a pointer to the command's help.</summary>
internal sealed class UsageException(string message) : ArgumentException(message);

/// <summary>Which exceptions are the user's input (reported in one line) rather than bugs (reported with a trace), and how
/// they read on the command line.</summary>
internal static class CliErrors
{
    public static bool IsUserError(Exception e) => e is CheckpointException or TokenizerException or ArgumentException
        or InvalidOperationException or InvalidDataException or FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException
        or OperationCanceledException or IOException or NotSupportedException || IsOutOfMemory(e);

    /// <summary>True for errors in what was typed rather than in what happened while running: an option the library refused
    /// (<see cref="OptionException"/>) or a <see cref="UsageException"/>.</summary>
    public static bool IsUsageError(Exception e) => e is OptionException or UsageException;

    /// <summary>The flag that sets each option the library's errors name.</summary>
    static readonly Dictionary<TernOption, string> Flags = new()
    {
        [TernOption.KvPolicy] = "--kv-policy",
        [TernOption.KvBudget] = "--kv-budget",
        [TernOption.KvSink] = "--kv-sink",
        [TernOption.KvRecent] = "--kv-recent",
        [TernOption.KvBits] = "--kv-bits",
        [TernOption.SparsityMlp] = "--mlp",
        [TernOption.SparsityHeads] = "--heads",
        [TernOption.Sparsity] = "--sparsity",
        [TernOption.KvEvictEvery] = "--kv-evict-every",
        [TernOption.MaxNewTokens] = "--max-new-tokens",
        [TernOption.PrefillChunk] = "--prefill-chunk",
        [TernOption.Temperature] = "--temperature",
        [TernOption.TopK] = "--top-k",
        [TernOption.TopP] = "--top-p",
        [TernOption.RepetitionPenalty] = "--repetition-penalty",
        [TernOption.MaxBatchSize] = "--max-batch",
        [TernOption.KvBudgetTokens] = "--kv-budget-tokens",
        [TernOption.MaxQueue] = "--max-queue",
        [TernOption.MaxPromptTokens] = "--max-prompt-tokens",
        [TernOption.ServingMaxNewTokens] = "--max-tokens",
        [TernOption.MaxPrefillTokensPerStep] = "--max-prefill-tokens",
        [TernOption.OffloadDirectory] = "--offload-dir",
        [TernOption.Offload] = "--offload",
        [TernOption.CompressBits] = "--bits",
        [TernOption.CompressGroupSize] = "--group-size",
        [TernOption.CompressDamping] = "--damp",
        [TernOption.CompressSparsity] = "--sparsity",
        [TernOption.CalibrationSamples] = "--calib-samples",
        [TernOption.CalibrationLength] = "--calib-seq-len",
        [TernOption.SoftPromptTokens] = "--tokens",
        [TernOption.SoftPromptFile] = "--soft-prompt",
        [TernOption.PerplexityWindow] = "--window",
        [TernOption.PerplexityStride] = "--stride",
        [TernOption.StartToken] = "--start-token",
        [TernOption.InRank] = "--inrank",
        [TernOption.InRankInitialRank] = "--inrank-initial-rank",
        [TernOption.InRankBuffer] = "--inrank-buffer",
        [TernOption.InRankThreshold] = "--inrank-threshold",
        [TernOption.InRankWarmup] = "--inrank-warmup",
        [TernOption.InRankCheckEvery] = "--inrank-check-every",
        [TernOption.InRankStage1Steps] = "--inrank-stage1-steps",
        [TernOption.InRankInitScale] = "--inrank-init-scale",
        [TernOption.InRankMaxRankFraction] = "--inrank-max-rank-fraction",
        [TernOption.InRankFixedRank] = "--low-rank",
    };

    /// <summary>An option as the command line spells it: its flag.</summary>
    public static string Flag(TernOption option) => Flags.GetValueOrDefault(option, option.Name);

    /// <summary>The one line to print for a user error: option errors name the flags.</summary>
    public static string Message(Exception e) => e switch
    {
        OptionException option => option.Render(Flag),
        _ when IsOutOfMemory(e) => OutOfMemory(e),
        _ => e.Message,
    };

    /// <summary>libtorch's allocation failures (CUDA's caching allocator or the host's): what was asked cannot fit, which the
    /// user can change, so one line and no trace.</summary>
    public static bool IsOutOfMemory(Exception e) => e is System.Runtime.InteropServices.ExternalException
        && new[] { "out of memory", "not enough memory", "can't allocate memory" }.Any(m => e.Message.Contains(m, StringComparison.OrdinalIgnoreCase));

    // libtorch's first sentences (what was asked, what is free) without its allocator advice and C++ frames, then what to change.
    static string OutOfMemory(Exception e)
    {
        string detail = e.Message.Split('\n')[0].Trim();
        if (detail.IndexOf("DefaultCPUAllocator: ", StringComparison.Ordinal) is >= 0 and var host) detail = "host memory: " + detail[(host + 21)..];
        foreach (string tail in new[] { " Including non-PyTorch", " If reserved", " (most recent call first)" })
            if (detail.IndexOf(tail, StringComparison.Ordinal) is > 0 and var cut) detail = detail[..cut];
        return $"{detail.TrimEnd()} Ask for less memory: a smaller batch or sequence; when generating, also --prefill-chunk, a quantized "
            + "KV cache (--kv-bits 8 or 4) or --offload.";
    }
}
