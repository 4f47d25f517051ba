using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Prompting;

/// <summary>
/// A soft prompt (prompt tuning; Compress-Then-Prompt, Xu et al. 2024): n trained vectors in the token-embedding space that
/// are placed before every input, the model itself unchanged. Held as an fp32 master copy [n, E] on the CPU whatever the
/// model's type; saved as a one-tensor safetensors file.
/// </summary>
public sealed class SoftPrompt : IDisposable
{
    /// <summary>The tensor's name in the file.</summary>
    public const string TensorName = "soft_prompt";

    SoftPrompt(Tensor embeddings, IReadOnlyDictionary<string, string> metadata)
    {
        Embeddings = embeddings;
        Metadata = metadata;
    }

    /// <summary>The prompt vectors, fp32 [n, E], CPU.</summary>
    public Tensor Embeddings { get; }

    /// <summary>What the file says about how the prompt was made (model, steps, data).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>n, the positions the prompt takes.</summary>
    public int Length => (int)Embeddings.size(0);

    /// <summary>The released code's working initialisation: a copy of the embeddings of token ids 0..n−1.</summary>
    public static SoftPrompt FromVocabulary(CausalLanguageModel model, int tokens)
    {
        if (tokens < 0 || tokens > model.Info.VocabSize)
            throw new OptionException($"{TernOption.SoftPromptTokens} must be in [0, {model.Info.VocabSize}] (the vocabulary) (got {tokens}).");
        return new SoftPrompt(model.EmbeddingRows(tokens).DetachFromDisposeScope(), new Dictionary<string, string>());
    }

    /// <summary>A prompt from given vectors [n, E] (copied to an fp32 CPU tensor).</summary>
    public static SoftPrompt FromTensor(Tensor embeddings, IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (embeddings.dim() != 2) throw new ArgumentException($"a soft prompt is [tokens, width]; got {embeddings.dim()} dimensions.");
        using var noGrad = torch.no_grad();
        return new SoftPrompt(embeddings.detach().to(ScalarType.Float32, torch.CPU, copy: true).DetachFromDisposeScope(),
            metadata ?? new Dictionary<string, string>());
    }

    /// <summary>Reads a prompt file and checks that it fits <paramref name="model"/> (same token-embedding width).</summary>
    public static SoftPrompt Load(string path, CausalLanguageModel model) => Load(path, model.TokenEmbeddingWidth);

    /// <summary>Reads a prompt file and checks that its vectors are <paramref name="tokenEmbeddingWidth"/> wide (an offloaded
    /// model's <see cref="Offloading.OffloadedModel.TokenEmbeddingWidth"/>).</summary>
    public static SoftPrompt Load(string path, long tokenEmbeddingWidth)
    {
        if (!File.Exists(path)) throw new OptionException($"{TernOption.SoftPromptFile} '{Path.GetFullPath(path)}' does not exist; train one with 'tern prompt train'.");
        using var file = SafetensorsFile.Open(path);
        if (!file.Contains(TensorName))
            throw new OptionException($"{TernOption.SoftPromptFile} '{path}' holds no '{TensorName}' tensor; is it a file written by 'tern prompt train'?");
        var info = file.Info(TensorName);
        long width = tokenEmbeddingWidth;
        if (info.Shape.Count != 2 || info.Shape[1] != width)
            throw new OptionException($"{TernOption.SoftPromptFile} '{path}' is [{string.Join(", ", info.Shape)}]; this model's token embeddings are {width} wide (a prompt transfers only between models of the same width and tokenizer).");
        return new SoftPrompt(file.Load(TensorName, ScalarType.Float32, torch.CPU).DetachFromDisposeScope(), file.Metadata.ToDictionary());
    }

    /// <summary>Writes the prompt (atomically) with <paramref name="metadata"/> added to its own.</summary>
    public void Save(string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var all = Metadata.Concat(metadata ?? new Dictionary<string, string>()).GroupBy(kv => kv.Key).ToDictionary(g => g.Key, g => g.Last().Value);
        SafetensorsWriter.Write(path, new[] { (TensorName, Embeddings) }, all);
    }

    /// <inheritdoc />
    public void Dispose() => Embeddings.Dispose();
}
