using Tern.Tokenization;

namespace Tern.Tests.Tokenization;

/// <summary>Format selection, config side files and error messages of <see cref="TernTokenizer.Load"/>.</summary>
public sealed class TokenizerLoadingTests : IDisposable
{
    private readonly string _temp = Directory.CreateTempSubdirectory("tern-tok-").FullName;

    public void Dispose() => Directory.Delete(_temp, recursive: true);

    private string CopyOf(string fixture, params string[] files)
    {
        string dir = Path.Combine(_temp, fixture + "-" + Guid.NewGuid().ToString("N")[..6]);
        Directory.CreateDirectory(dir);
        foreach (string f in files) File.Copy(Path.Combine(Fixtures.TokenizerDir(fixture), f), Path.Combine(dir, f));
        return dir;
    }

    [Fact]
    public void Missing_files_name_the_folder_and_the_files_looked_for()
    {
        var e = Assert.Throws<TokenizerException>(() => TernTokenizer.Load(_temp));
        Assert.Contains(_temp, e.Message);
        Assert.Contains("tokenizer.json", e.Message);
        Assert.Contains("tokenizer.model", e.Message);
        Assert.Contains("vocab.json + merges.txt", e.Message);
    }

    [Fact]
    public void Vocab_without_merges_says_which_file_is_missing()
    {
        string dir = CopyOf("gpt2-vocab-merges", "vocab.json");
        var e = Assert.Throws<TokenizerException>(() => TernTokenizer.Load(dir));
        Assert.Contains("merges.txt is missing", e.Message);
    }

    [Fact]
    public void Missing_folder_is_a_tokenizer_exception()
    {
        string dir = Path.Combine(_temp, "nope");
        var e = Assert.Throws<TokenizerException>(() => TernTokenizer.Load(dir));
        Assert.Contains(dir, e.Message);
    }

    [Theory]
    [InlineData("WordPiece")]
    [InlineData("Unigram")]
    [InlineData("WordLevel")]
    public void Unsupported_tokenizer_json_model_is_a_clear_error(string type)
    {
        File.WriteAllText(Path.Combine(_temp, "tokenizer.json"),
            """{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":""" +
            $"\"{type}\"" + ""","vocab":{"a":0}}}""");
        var e = Assert.Throws<TokenizerException>(() => TernTokenizer.Load(_temp));
        Assert.Contains(type, e.Message);
        Assert.Contains("not supported", e.Message);
    }

    [Fact]
    public void Llama_gqa_model_folder_tokenizer_loads()
    {
        var tokenizer = TernTokenizer.Load(Fixtures.ModelDir("llama-gqa"));
        Assert.Equal(TokenizerFormat.TokenizerJson, tokenizer.Format);
        Assert.Equal(320, tokenizer.VocabSize);
        Assert.Equal(1, tokenizer.BosTokenId);
        Assert.Equal(2, tokenizer.EosTokenId);
        Assert.Equal([2], tokenizer.EosTokenIds);
        string text = "Hello world! café 👍🏽";
        var ids = tokenizer.Encode(text, addSpecialTokens: false);
        Assert.All(ids, id => Assert.InRange(id, 0, 319));
        Assert.Equal(text, tokenizer.Decode(ids));
        Assert.Equal(ChatTemplateShape.ChatML, tokenizer.CreateChatFormatter().Template.Shape);
    }

    [Fact]
    public void Tokenizer_json_wins_over_the_other_formats()
    {
        string dir = CopyOf("neox-tokenizer-json", "tokenizer.json", "tokenizer_config.json");
        foreach (var f in new[] { "vocab.json", "merges.txt" })
            File.Copy(Path.Combine(Fixtures.TokenizerDir("gpt2-vocab-merges"), f), Path.Combine(dir, f));
        File.Copy(Path.Combine(Fixtures.TokenizerDir("llama2-sentencepiece"), "tokenizer.model"), Path.Combine(dir, "tokenizer.model"));
        Assert.Equal(TokenizerFormat.TokenizerJson, TernTokenizer.Load(dir).Format);

        File.Delete(Path.Combine(dir, "tokenizer.json"));
        Assert.Equal(TokenizerFormat.SentencePiece, TernTokenizer.Load(dir).Format);
    }

    [Fact]
    public void Generation_config_eos_list_and_pad_are_used()
    {
        string dir = CopyOf("llama3-tokenizer-json", "tokenizer.json", "tokenizer_config.json");
        File.WriteAllText(Path.Combine(dir, "generation_config.json"), """{"bos_token_id": 0, "eos_token_id": [1, 4], "pad_token_id": 3}""");
        var tokenizer = TernTokenizer.Load(dir);
        Assert.Equal([1, 4], tokenizer.EosTokenIds);
        Assert.Equal(4, tokenizer.EosTokenId);
        Assert.Equal(3, tokenizer.PadTokenId);
        Assert.Equal(0, tokenizer.BosTokenId);
    }

    [Fact]
    public void Special_tokens_map_and_added_tokens_decoder_are_read()
    {
        string dir = CopyOf("gpt2-vocab-merges", "vocab.json", "merges.txt");
        File.WriteAllText(Path.Combine(dir, "special_tokens_map.json"), """{"bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}""");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
            """{"add_bos_token": true, "added_tokens_decoder": {"600": {"content": "<|im_start|>", "special": true}, "601": {"content": "<|im_end|>", "special": true}}}""");
        var tokenizer = TernTokenizer.Load(dir);
        Assert.Equal(0, tokenizer.PadTokenId);
        Assert.True(tokenizer.AddsBosToken);
        var ids = tokenizer.Encode("<|im_start|>user\nHi<|im_end|>");
        Assert.Equal(0, ids[0]);
        Assert.Equal(600, ids[1]);
        Assert.Equal(601, ids[^1]);
        Assert.Equal("user\nHi", tokenizer.Decode(ids));
        Assert.Equal("<|endoftext|><|im_start|>user\nHi<|im_end|>", tokenizer.Decode(ids, skipSpecialTokens: false));
    }

    [Fact]
    public void Tokenizer_config_add_bos_token_false_removes_the_template_bos()
    {
        string dir = CopyOf("llama3-tokenizer-json", "tokenizer.json");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "add_bos_token": false}""");
        var tokenizer = TernTokenizer.Load(dir);
        Assert.False(tokenizer.AddsBosToken);
        Assert.Equal(tokenizer.Encode("Hello", addSpecialTokens: false), tokenizer.Encode("Hello"));
    }

    [Fact]
    public void Chat_template_jinja_file_is_read()
    {
        string dir = CopyOf("neox-tokenizer-json", "tokenizer.json");
        File.WriteAllText(Path.Combine(dir, "chat_template.jinja"), "{% for m in messages %}<|im_start|>{{ m.role }}...{% endfor %}");
        var tokenizer = TernTokenizer.Load(dir);
        Assert.NotNull(tokenizer.ChatTemplate);
        Assert.Equal(ChatTemplateShape.ChatML, tokenizer.CreateChatFormatter().Template.Shape);
        Assert.Null(tokenizer.CreateChatFormatter().Template.DefaultSystemPrompt);
    }
}
