using System.Text;
using System.Text.Json.Nodes;
using Tern.Generation;
using Tern.Tokenization;

namespace Tern.Server;

/// <summary>
/// Logprobs in OpenAI's shapes. Chat: <c>{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}</c>.
/// Completions: <c>{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}</c>, where an echoed prompt's first
/// token has null scores. A token's text is its bytes decoded alone (a token holding part of a character shows U+FFFD; its
/// bytes are exact); a special token shows its own text.
/// </summary>
internal sealed class LogprobsJson(TernTokenizer? tokenizer)
{
    byte[] Bytes(int id) => tokenizer?.TokenBytes(id) ?? Encoding.UTF8.GetBytes(Token(id));

    string Token(int id) => tokenizer?.TokenBytes(id) is { } bytes ? Encoding.UTF8.GetString(bytes)
        : tokenizer?.Decode(new[] { id }, skipSpecialTokens: false) ?? id.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Characters a token adds to the returned text (special tokens are skipped there).</summary>
    int TextLength(int id) => tokenizer?.TokenBytes(id) is { } bytes ? Encoding.UTF8.GetString(bytes).Length : 0;

    JsonObject ChatEntry(TokenLogprob t) => new()
    {
        ["token"] = Token(t.TokenId),
        ["logprob"] = t.Logprob,
        ["bytes"] = new JsonArray(Bytes(t.TokenId).Select(b => (JsonNode)(int)b).ToArray()),
    };

    /// <summary>A chat choice's <c>logprobs</c> for these tokens.</summary>
    public JsonObject Chat(IEnumerable<TokenLogprob> tokens) => new()
    {
        ["content"] = new JsonArray(tokens.Select(t =>
        {
            var entry = ChatEntry(t);
            entry["top_logprobs"] = new JsonArray(t.Top.Select(a => (JsonNode)ChatEntry(a)).ToArray());
            return (JsonNode)entry;
        }).ToArray()),
        ["refusal"] = null,
    };

    /// <summary>A completion choice's <c>logprobs</c> for these tokens (a null score: an echoed prompt's first token), whose
    /// text starts at character <paramref name="offset"/> of the choice's text; returns the offset after them.</summary>
    public JsonObject Completion(IReadOnlyList<(int Id, TokenLogprob? Score)> tokens, ref int offset)
    {
        var (texts, scores, tops, offsets) = (new JsonArray(), new JsonArray(), new JsonArray(), new JsonArray());
        foreach (var (id, score) in tokens)
        {
            texts.Add(Token(id));
            scores.Add(score is null ? null : JsonValue.Create(score.Logprob));
            if (score is null) tops.Add(null);
            else
            {
                var top = new JsonObject();
                foreach (var a in score.Top) top.TryAdd(Token(a.TokenId), a.Logprob); // of tokens that decode alike, the likeliest
                tops.Add(top);
            }
            offsets.Add(offset);
            offset += TextLength(id);
        }
        return new JsonObject { ["tokens"] = texts, ["token_logprobs"] = scores, ["top_logprobs"] = tops, ["text_offset"] = offsets };
    }
}
