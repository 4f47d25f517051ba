using Tern.Tokenization;

namespace Tern.Tests.Tokenization;

/// <summary>Ids, decoding, special tokens and chat prompts against HF transformers for the four fixture tokenizers.</summary>
public class TokenizerParityTests
{
    public static TheoryData<string, int> TextCases => TokenizerReference.TextCases();
    public static TheoryData<string> FolderCases => TokenizerReference.FolderCases();

    [Theory]
    [MemberData(nameof(TextCases))]
    public void Encode_without_special_tokens_matches_hf(string folder, int index)
    {
        var tokenizer = TokenizerReference.Tokenizer(folder);
        string text = TokenizerReference.Texts[index];
        Assert.Equal(TokenizerReference.Ids(folder, "ids", index), tokenizer.Encode(text, addSpecialTokens: false));
    }

    [Theory]
    [MemberData(nameof(TextCases))]
    public void Encode_with_special_tokens_matches_hf(string folder, int index)
    {
        var tokenizer = TokenizerReference.Tokenizer(folder);
        string text = TokenizerReference.Texts[index];
        Assert.Equal(TokenizerReference.Ids(folder, "ids_with_special", index), tokenizer.Encode(text));
    }

    [Theory]
    [MemberData(nameof(TextCases))]
    public void Decode_matches_hf(string folder, int index)
    {
        var tokenizer = TokenizerReference.Tokenizer(folder);
        string expected = TokenizerReference.For(folder).GetProperty("decoded")[index].GetString()!;
        Assert.Equal(expected, tokenizer.Decode(TokenizerReference.Ids(folder, "ids_with_special", index)));
        Assert.Equal(expected, tokenizer.Decode(TokenizerReference.Ids(folder, "ids", index)));
    }

    [Theory]
    [MemberData(nameof(TextCases))]
    public void Streaming_decoder_one_id_at_a_time_yields_decode(string folder, int index)
    {
        var tokenizer = TokenizerReference.Tokenizer(folder);
        int[] ids = TokenizerReference.Ids(folder, "ids_with_special", index);
        string expected = tokenizer.Decode(ids);
        var stream = tokenizer.CreateStreamingDecoder();
        var chunks = new List<string>();
        foreach (int id in ids) chunks.Add(stream.Push(id));
        chunks.Add(stream.Flush());

        Assert.Equal(expected, string.Concat(chunks));
        if (!expected.Contains('\uFFFD'))
        {
            // Only whole characters come out: no replacement characters, no lone surrogates.
            foreach (string chunk in chunks)
            {
                Assert.DoesNotContain('\uFFFD', chunk);
                if (chunk.Length > 0)
                {
                    Assert.False(char.IsHighSurrogate(chunk[^1]), $"chunk ends in a high surrogate: {chunk}");
                    Assert.False(char.IsLowSurrogate(chunk[0]), $"chunk starts with a low surrogate: {chunk}");
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(FolderCases))]
    public void Special_token_ids_match_hf(string folder)
    {
        var tokenizer = TokenizerReference.Tokenizer(folder);
        var reference = TokenizerReference.For(folder);
        Assert.Equal(reference.GetProperty("bos_token_id").GetInt32(), tokenizer.BosTokenId);
        Assert.Equal(reference.GetProperty("eos_token_id").GetInt32(), tokenizer.EosTokenId);
        Assert.Equal([reference.GetProperty("eos_token_id").GetInt32()], tokenizer.EosTokenIds);
    }

    [Theory]
    [MemberData(nameof(FolderCases))]
    public void Chat_prompts_match_hf_apply_chat_template(string folder)
    {
        var formatter = TokenizerReference.Tokenizer(folder).CreateChatFormatter();
        var chat = TokenizerReference.For(folder).GetProperty("chat");
        Assert.True(formatter.Template.IsRecognized);
        Assert.False(formatter.UsesFallback);
        Assert.Equal(chat.GetProperty("with_system").GetString(), formatter.Format(TokenizerReference.Conversation(withSystem: true), addGenerationPrompt: true));
        Assert.Equal(chat.GetProperty("no_system").GetString(), formatter.Format(TokenizerReference.Conversation(withSystem: false), addGenerationPrompt: true));
    }

    [Theory]
    [InlineData("gpt2-vocab-merges", TokenizerFormat.VocabMerges)]
    [InlineData("neox-tokenizer-json", TokenizerFormat.TokenizerJson)]
    [InlineData("llama3-tokenizer-json", TokenizerFormat.TokenizerJson)]
    [InlineData("llama2-sentencepiece", TokenizerFormat.SentencePiece)]
    public void Format_and_description(string folder, TokenizerFormat format)
    {
        var tokenizer = TokenizerReference.Tokenizer(folder);
        Assert.Equal(format, tokenizer.Format);
        Assert.True(tokenizer.VocabSize > 256);
        string description = tokenizer.Describe();
        Assert.DoesNotContain('\n', description);
        Assert.Contains($"{tokenizer.VocabSize} tokens", description);
    }

    [Theory]
    [InlineData("llama3-tokenizer-json", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", new[] { 2 }, 4)]
    [InlineData("neox-tokenizer-json", "a<|endoftext|>", new[] { 0 }, 0)]
    [InlineData("llama2-sentencepiece", "Hi</s><s>", new[] { 2, 1 }, 1)]
    public void Special_tokens_in_text_are_single_ids(string folder, string text, int[] mustContain, int last)
    {
        var tokenizer = TokenizerReference.Tokenizer(folder);
        var ids = tokenizer.Encode(text, addSpecialTokens: false);
        foreach (int id in mustContain) Assert.Contains(id, ids);
        Assert.Equal(last, ids[^1]);
        Assert.Equal(text, tokenizer.Decode(ids, skipSpecialTokens: false));
    }

    [Theory]
    [MemberData(nameof(FolderCases))]
    public void Token_lookup_round_trips(string folder)
    {
        var tokenizer = TokenizerReference.Tokenizer(folder);
        for (int id = 0; id < tokenizer.VocabSize; id++)
        {
            string? token = tokenizer.IdToToken(id);
            Assert.NotNull(token);
            Assert.Equal(id, tokenizer.TokenToId(token));
        }
        Assert.Null(tokenizer.IdToToken(-1));
        Assert.Null(tokenizer.IdToToken(tokenizer.VocabSize + 10));
        Assert.Null(tokenizer.TokenToId("no such token, surely"));
    }
}
