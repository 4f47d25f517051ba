using Tern.Runtime;
using Tern.Tokenization;

namespace Tern.Training;

/// <summary>Writes the binary token files <see cref="TokenStream"/> reads: a corpus encoded once, on the CPU, then trained on anywhere.</summary>
public static class TokenFile
{
    /// <summary>
    /// Encodes <paramref name="text"/> without adding BOS/EOS (the corpus carries its own separator tokens). The text is cut
    /// right after each occurrence of <paramref name="separator"/> — a special token, so the tokenizer splits there anyway and the
    /// result equals encoding the whole text — and the pieces are encoded in parallel.
    /// </summary>
    public static int[] Encode(TernTokenizer tokenizer, string text, string separator = "<|endoftext|>", IProgress<double>? progress = null)
    {
        var pieces = new List<(int Start, int Length)>();
        int chunk = Math.Max(1 << 16, text.Length / (8 * Environment.ProcessorCount));
        for (int start = 0; start < text.Length;)
        {
            int end = Math.Min(text.Length, start + chunk);
            if (end < text.Length)
            {
                int cut = text.IndexOf(separator, end, StringComparison.Ordinal);
                end = cut < 0 ? text.Length : cut + separator.Length;
            }
            pieces.Add((start, end - start));
            start = end;
        }
        var encoded = new IReadOnlyList<int>[pieces.Count];
        int done = 0;
        Parallel.For(0, pieces.Count, i =>
        {
            encoded[i] = tokenizer.Encode(text.Substring(pieces[i].Start, pieces[i].Length), addSpecialTokens: false);
            progress?.Report((double)Interlocked.Increment(ref done) / pieces.Count);
        });
        return encoded.SelectMany(e => e).ToArray();
    }

    /// <summary>Writes ids little-endian in <paramref name="format"/>, atomically.</summary>
    public static void Write(string path, IReadOnlyList<int> ids, TokenFileFormat format)
    {
        int width = format == TokenFileFormat.UInt16 ? 2 : 4;
        int limit = format == TokenFileFormat.UInt16 ? ushort.MaxValue : int.MaxValue;
        var bytes = new byte[(long)ids.Count * width];
        for (int i = 0; i < ids.Count; i++)
        {
            int id = ids[i];
            if (id < 0 || id > limit)
                throw new ArgumentException($"token id {id} does not fit the {format} token format; use int32.");
            if (width == 2) BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), (ushort)id);
            else BitConverter.TryWriteBytes(bytes.AsSpan(4 * i), id);
        }
        AtomicFile.Write(path, stream => stream.Write(bytes));
    }
}
