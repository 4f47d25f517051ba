using System.Text;

namespace Tern.Cli.Commands;

/// <summary>Text inputs (--text, --input of tokenizer train and encode, --prompt-file): read as strict UTF-8, so that a
/// binary file (a token file, a checkpoint) is refused by name instead of being scored or trained on as replacement
/// characters.</summary>
internal static class TextFiles
{
    static readonly UTF8Encoding Strict = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>The text of <paramref name="path"/>, given by <paramref name="flag"/>; a missing or binary file is an error
    /// naming both.</summary>
    public static string Read(string path, string flag)
    {
        string full = Path.GetFullPath(path);
        if (!File.Exists(full)) throw new FileNotFoundException($"{flag}: '{full}' does not exist.", full);
        byte[] bytes = File.ReadAllBytes(full);
        string why = Array.IndexOf(bytes, (byte)0) is var nul and >= 0 ? $"a NUL byte at offset {nul:N0}" : "";
        if (why.Length == 0)
        {
            try
            {
                int bom = bytes.AsSpan().StartsWith(Strict.Preamble) ? Strict.Preamble.Length : 0;
                return Strict.GetString(bytes, bom, bytes.Length - bom);
            }
            catch (DecoderFallbackException e)
            {
                why = $"invalid UTF-8 at offset {e.Index:N0}";
            }
        }
        throw new InvalidDataException($"{flag}: '{full}' looks binary ({why}); pass a UTF-8 text file.");
    }
}
