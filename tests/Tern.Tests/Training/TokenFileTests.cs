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
    public void AStartTokenBeginsEveryWindowAndTheTargetsStayTheNextTokens()
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("tern-tokens-").FullName, "t.bin");
        try
        {
            var ids = Enumerable.Range(10, 50).ToArray(); // id = 10 + offset, so each window shows where it starts
            TokenFile.Write(path, ids, TokenFileFormat.UInt16);
            var stream = TokenStream.Load(path, TokenFileFormat.UInt16, vocabSize: 100);
            ulong rng = 7, same = 7;
            var (plainIn, plainOut) = stream.RandomBatch(ref rng, 3, 8, TorchSharp.torch.CPU);
            var (bosIn, bosOut) = stream.RandomBatch(ref same, 3, 8, TorchSharp.torch.CPU, startToken: 1);
            for (int b = 0; b < 3; b++)
            {
                long first = plainIn[b, 0].item<long>();
                Assert.Equal(1, bosIn[b, 0].item<long>());
                for (int i = 1; i < 8; i++) Assert.Equal(first + i - 1, bosIn[b, i].item<long>());
                for (int i = 0; i < 8; i++)
                {
                    Assert.Equal(first + i, bosOut[b, i].item<long>());
                    Assert.Equal(first + i + 1, plainOut[b, i].item<long>());
                }
            }
            var (validIn, _) = stream.FixedBatch(1, 2, 8, TorchSharp.torch.CPU, startToken: 1);
            Assert.Equal(new long[] { 1, 10 + 16, 10 + 17 }, validIn[0].narrow(0, 0, 3).data<long>().ToArray());
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
