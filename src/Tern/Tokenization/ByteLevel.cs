using System.Text;

namespace Tern.Tokenization;

/// <summary>
/// GPT-2's reversible byte ↔ printable-character table (<c>bytes_to_unicode</c>), used by byte-level BPE:
/// every UTF-8 byte of the text becomes one visible character, so a space is <c>Ġ</c> and a newline <c>Ċ</c>.
/// </summary>
internal static class ByteLevel
{
    public static readonly char[] ByteToChar = BuildTable();
    private static readonly Dictionary<char, byte> CharToByteMap = BuildReverse();

    /// <summary>The regex GPT-2 (and the <c>ByteLevel</c> pre-tokenizer with <c>use_regex</c>) splits text with.</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private static char[] BuildTable()
    {
        var table = new char[256];
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            table[b] = printable ? (char)b : (char)(256 + n++);
        }
        return table;
    }

    private static Dictionary<char, byte> BuildReverse()
    {
        var map = new Dictionary<char, byte>(256);
        for (int b = 0; b < 256; b++) map[ByteToChar[b]] = (byte)b;
        return map;
    }

    /// <summary>The byte-level form of <paramref name="text"/>: its UTF-8 bytes as table characters.</summary>
    public static string Encode(string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        return string.Create(bytes.Length, bytes, static (span, b) =>
        {
            for (int i = 0; i < b.Length; i++) span[i] = ByteToChar[b[i]];
        });
    }

    /// <summary>
    /// Appends the bytes a byte-level token stands for. As in HF <c>tokenizers</c>, a token holding a character
    /// outside the table (an added token such as <c>&lt;｜end▁of▁sentence｜&gt;</c>) contributes its own UTF-8 bytes.
    /// </summary>
    public static void AppendBytes(string token, List<byte> output)
    {
        int start = output.Count;
        foreach (char c in token)
        {
            if (CharToByteMap.TryGetValue(c, out byte b)) output.Add(b);
            else
            {
                output.RemoveRange(start, output.Count - start);
                output.AddRange(Encoding.UTF8.GetBytes(token));
                return;
            }
        }
    }
}
