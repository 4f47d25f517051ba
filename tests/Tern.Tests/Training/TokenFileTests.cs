using Tern.Tokenization;
using Tern.Training;

namespace Tern.Tests.Training;

public sealed class TokenFileTests
{
    static TernTokenizer Tokenizer() => TernTokenizer.Load(Fixtures.TokenizerDir("neox-tokenizer-json"));

    [Fact]
    public void ParallelEncodingEqualsEncodingTheWholeText()
    {
        var tok = Tokenizer();
        var text = string.Concat(Enumerable.Range(0, 3000).Select(i => $"Document {i}: the quick brown fox, naïve café 日本 👍\n\n  code(x) {{ return x; }}\n<|endoftext|>\n"));
        var whole = tok.Encode(text, addSpecialTokens: false);
        Assert.Equal(whole, TokenFile.Encode(tok, text));
        Assert.Contains(tok.TokenToId("<|endoftext|>")!.Value, whole);
    }

    [Theory]
    [InlineData(TokenFileFormat.UInt16)]
    [InlineData(TokenFileFormat.Int32)]
    public void WrittenFilesReadBackAsTheSameIds(TokenFileFormat format)
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("tern-tokens-").FullName, "t.bin");
        try
        {
            int[] ids = { 0, 1, 599, 42, 7 };
            TokenFile.Write(path, ids, format);
            var stream = TokenStream.Load(path, format, vocabSize: 600);
            Assert.Equal(ids.Length, stream.Count);
            Assert.Equal(ids.Length * (format == TokenFileFormat.UInt16 ? 2 : 4), new FileInfo(path).Length);
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(path)!, true);
        }
    }

    [Fact]
    public void AnIdTooLargeForSixteenBitsIsRefused()
    {
        string path = Path.Combine(Path.GetTempPath(), $"tern-{Guid.NewGuid():N}.bin");
        var e = Assert.Throws<ArgumentException>(() => TokenFile.Write(path, new[] { 70000 }, TokenFileFormat.UInt16));
        Assert.Contains("int32", e.Message);
        Assert.False(File.Exists(path));
    }
}
