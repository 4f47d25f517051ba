using Tern.Generation;
using Tern.Models;

namespace Tern.Cli.Commands;

/// <summary>The model's context cuts --max-new-tokens without a word from the generator: the CLI says so.</summary>
internal static class ContextCap
{
    /// <summary>A one-line note when <paramref name="options"/> ask for more new tokens than fit after a prompt of
    /// <paramref name="promptTokens"/> tokens; null when they fit (or the prompt alone is too long: that is an error).</summary>
    public static string? Note(ModelInfo info, int promptTokens, GenerationOptions options)
    {
        int room = options.NewTokensFor(info, promptTokens); // the generator's own rule
        if (room <= 0 || options.MaxNewTokens <= room) return null;
        return $"note: generation capped at {room} new tokens by the model's context (max_position_embeddings {info.MaxPositions} " +
            $"minus a {promptTokens}-token prompt); --max-new-tokens {options.MaxNewTokens} asks for more.";
    }
}
