using Tern.Tokenization;

namespace Tern.Tests.Tokenization;

/// <summary>Small hand-made <c>tokenizer.json</c> files for features the fixtures do not exercise.</summary>
public sealed class TokenizerJsonFeatureTests : IDisposable
{
    private readonly string _temp = Directory.CreateTempSubdirectory("tern-tokjson-").FullName;

    public void Dispose() => Directory.Delete(_temp, recursive: true);

    private TernTokenizer Load(string modelJson, string addedTokens = "[]", string preTokenizer = """{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}""")
    {
        string dir = Path.Combine(_temp, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"),
            "{\"version\":\"1.0\",\"added_tokens\":" + addedTokens + ",\"normalizer\":null,\"pre_tokenizer\":" + preTokenizer +
            ",\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},\"model\":" + modelJson + "}");
        return TernTokenizer.Load(dir);
    }

    [Theory]
    [InlineData(false, new[] { 3, 2 })]
    [InlineData(true, new[] { 4 })]
    public void Ignore_merges_takes_whole_pieces_from_the_vocabulary(bool ignoreMerges, int[] expected)
    {
        var tokenizer = Load($$"""{"type":"BPE","ignore_merges":{{(ignoreMerges ? "true" : "false")}},"vocab":{"a":0,"b":1,"c":2,"ab":3,"abc":4},"merges":["a b"]}""");
        Assert.Equal(expected, tokenizer.Encode("abc"));
        Assert.Equal("abc", tokenizer.Decode(expected));
    }

    [Fact]
    public void Added_tokens_with_lstrip_and_rstrip_absorb_whitespace()
    {
        var tokenizer = Load("""{"type":"BPE","vocab":{"a":0,"b":1,"Ġ":2},"merges":[]}""",
            """[{"id":3,"content":"<mask>","special":true,"lstrip":true,"rstrip":false},{"id":4,"content":"<end>","special":false,"rstrip":true}]""");
        Assert.Equal(new[] { 0, 3, 2, 1 }, tokenizer.Encode("a <mask> b"));
        Assert.Equal(new[] { 0, 4, 1 }, tokenizer.Encode("a<end>  b"));
        Assert.Equal("a<end>b", tokenizer.Decode([0, 4, 1]));
        Assert.Equal("a b", tokenizer.Decode([0, 3, 2, 1]));
    }

    [Fact]
    public void Possessive_quantifiers_in_split_regexes_are_accepted()
    {
        var tokenizer = Load("""{"type":"BPE","vocab":{"a":0,"b":1,"Ġ":2,"1":3},"merges":[]}""",
            preTokenizer: """{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\p{L}++| ?\\p{N}|\\s++"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]}""");
        Assert.Equal(new[] { 0, 1, 2, 3 }, tokenizer.Encode("ab 1"));
    }

    [Fact]
    public void Unsupported_pre_tokenizer_is_named()
    {
        var e = Assert.Throws<TokenizerException>(() => Load("""{"type":"BPE","vocab":{"a":0},"merges":[]}""", preTokenizer: """{"type":"BertPreTokenizer"}"""));
        Assert.Contains("BertPreTokenizer", e.Message);
    }
}
