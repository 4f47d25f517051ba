using System.Collections.Concurrent;
using System.Text.Json;
using Tern.Tokenization;

namespace Tern.Tests.Tokenization;

/// <summary>
/// <c>tests/fixtures/tokenizers/reference.json</c>: what HF transformers 5.17 / tokenizers 0.23 produce for the four
/// fixture tokenizers, and the texts they were run on.
/// </summary>
internal static class TokenizerReference
{
    public static readonly string[] Folders = ["gpt2-vocab-merges", "neox-tokenizer-json", "llama3-tokenizer-json", "llama2-sentencepiece"];

    private static readonly Lazy<JsonElement> Root = new(() =>
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Fixtures.Root, "tokenizers", "reference.json")));
        return doc.RootElement.Clone();
    });

    private static readonly ConcurrentDictionary<string, TernTokenizer> Loaded = new();

    public static string[] Texts => Root.Value.GetProperty("texts").EnumerateArray().Select(e => e.GetString()!).ToArray();

    public static JsonElement For(string folder) => Root.Value.GetProperty("tokenizers").GetProperty(folder);

    public static int[] Ids(string folder, string key, int index)
        => For(folder).GetProperty(key)[index].EnumerateArray().Select(e => e.GetInt32()).ToArray();

    public static TernTokenizer Tokenizer(string folder) => Loaded.GetOrAdd(folder, f => TernTokenizer.Load(Fixtures.TokenizerDir(f)));

    /// <summary>The conversation the reference's <c>chat</c> renderings were made from.</summary>
    public static List<ChatMessage> Conversation(bool withSystem)
    {
        var messages = new List<ChatMessage>();
        if (withSystem) messages.Add(new ChatMessage("system", "You are terse."));
        messages.Add(new ChatMessage("user", "Hi there!"));
        messages.Add(new ChatMessage("assistant", " Hello. "));
        messages.Add(new ChatMessage("user", "Name a colour."));
        return messages;
    }

    /// <summary>(folder, text index) for every fixture tokenizer and every reference text.</summary>
    public static TheoryData<string, int> TextCases()
    {
        var data = new TheoryData<string, int>();
        int count = Texts.Length;
        foreach (var folder in Folders)
            for (int i = 0; i < count; i++) data.Add(folder, i);
        return data;
    }

    public static TheoryData<string> FolderCases()
    {
        var data = new TheoryData<string>();
        foreach (var folder in Folders) data.Add(folder);
        return data;
    }
}
