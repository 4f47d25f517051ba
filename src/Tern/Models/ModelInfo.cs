namespace Tern.Models;

/// <summary>The shape of a loaded model, for messages, <c>tern info</c> and memory estimates.</summary>
public sealed record ModelInfo
{
    /// <summary>Architecture as in config.json's <c>model_type</c> (llama, mistral, qwen2, opt, gpt_neox, gpt2, multihyena).</summary>
    public required string ModelType { get; init; }
    /// <summary>Vocabulary size of the embedding.</summary>
    public required int VocabSize { get; init; }
    /// <summary>Width of the residual stream.</summary>
    public required int HiddenSize { get; init; }
    /// <summary>Transformer layers.</summary>
    public required int Layers { get; init; }
    /// <summary>Query heads.</summary>
    public required int Heads { get; init; }
    /// <summary>Key/value heads (fewer than <see cref="Heads"/> under grouped-query attention).</summary>
    public required int KvHeads { get; init; }
    /// <summary>Dimension of one head.</summary>
    public required int HeadDim { get; init; }
    /// <summary>Longest sequence the model was built for (<c>max_position_embeddings</c> / <c>n_positions</c>).</summary>
    public required int MaxPositions { get; init; }
    /// <summary>True for learned absolute positions (OPT, GPT-2): positions past <see cref="MaxPositions"/> do not exist.</summary>
    public required bool LearnedPositions { get; init; }
    /// <summary>Parameters loaded (tied embeddings counted once).</summary>
    public long ParameterCount { get; init; }
    /// <summary>False for a model that keeps no keys or values per token (a distilled Hyena model: a fixed-size recurrent state
    /// per sequence instead).</summary>
    public bool CachesTokens { get; init; } = true;
    /// <summary>KV-cache bytes per token for a given element size (0 when the model caches no tokens).</summary>
    public long KvBytesPerToken(int elementSize) => CachesTokens ? 2L * Layers * KvHeads * HeadDim * elementSize : 0;
}
