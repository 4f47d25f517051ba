namespace Tern.Tokenization;

/// <summary>
/// A tokenizer folder or file that cannot be used: missing files, a malformed file, or a tokenizer kind
/// Tern does not implement. The message names the folder or file and what was expected.
/// </summary>
public sealed class TokenizerException : Exception
{
    public TokenizerException(string message) : base(message) { }
    public TokenizerException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>Which on-disk format a <see cref="TernTokenizer"/> was loaded from.</summary>
public enum TokenizerFormat
{
    /// <summary>A Hugging Face <c>tokenizer.json</c> (the "fast" tokenizer format).</summary>
    TokenizerJson,

    /// <summary>GPT-2 style <c>vocab.json</c> + <c>merges.txt</c> (GPT-2, OPT, RoBERTa-like byte-level BPE).</summary>
    VocabMerges,

    /// <summary>A SentencePiece <c>tokenizer.model</c> (Llama 1/2, Mistral v0.1 style BPE with byte fallback).</summary>
    SentencePiece,
}
