using System.Text.Json;
using System.Text.Json.Nodes;
using Tern.Tokenization;

namespace Tern.Tests.Tokenization;

/// <summary>
/// The llama2 SentencePiece fixture rewritten as the two <c>tokenizer.json</c> layouts real Llama/Mistral checkpoints
/// ship: transformers 5's (Metaspace, prepend_scheme "first") must give HF's ids, the legacy one
/// (Prepend "▁" + Replace normalizers, no pre-tokenizer) must give sentencepiece's own ids.
/// </summary>
public sealed class SentencePieceAsTokenizerJsonTests : IDisposable
{
    private const string Folder = "llama2-sentencepiece";
    private readonly string _temp = Directory.CreateTempSubdirectory("tern-spjson-").FullName;

    public void Dispose() => Directory.Delete(_temp, recursive: true);

    public static TheoryData<bool> Layouts => new() { true, false };

    private TernTokenizer Build(bool legacy)
    {
        var sp = SentencePieceModel.Read(Path.Combine(Fixtures.TokenizerDir(Folder), "tokenizer.model"));
        var vocab = new Dictionary<string, int>();
        for (int i = 0; i < sp.Pieces.Count; i++) vocab.TryAdd(sp.Pieces[i].Piece, i);
        var merges = sp.GenerateMerges(vocab);

        var vocabNode = new JsonObject();
        foreach (var (k, v) in vocab) vocabNode[k] = v;
        var mergesNode = new JsonArray(merges.Select(m => (JsonNode)new JsonArray(m.Left, m.Right)).ToArray());
        JsonNode Added(int id, string content) => new JsonObject { ["id"] = id, ["content"] = content, ["special"] = true, ["normalized"] = false };
        JsonNode Replace(string from, string to) => new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = from }, ["content"] = to };

        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(Added(0, "<unk>"), Added(1, "<s>"), Added(2, "</s>")),
            ["normalizer"] = legacy
                ? new JsonObject { ["type"] = "Sequence", ["normalizers"] = new JsonArray(new JsonObject { ["type"] = "Prepend", ["prepend"] = "▁" }, Replace(" ", "▁")) }
                : null,
            ["pre_tokenizer"] = legacy ? null : new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = "first", ["split"] = false },
            ["post_processor"] = JsonNode.Parse("""
                {"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
                 "pair":[],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}}
                """),
            ["decoder"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["decoders"] = new JsonArray(Replace("▁", " "), new JsonObject { ["type"] = "ByteFallback" }, new JsonObject { ["type"] = "Fuse" },
                    new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }),
            },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["unk_token"] = "<unk>", ["fuse_unk"] = true, ["byte_fallback"] = true,
                ["vocab"] = vocabNode, ["merges"] = mergesNode,
            },
        };
        string dir = Path.Combine(_temp, legacy ? "legacy" : "v5");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
        File.Copy(Path.Combine(Fixtures.TokenizerDir(Folder), "tokenizer_config.json"), Path.Combine(dir, "tokenizer_config.json"));
        return TernTokenizer.Load(dir);
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void Ids_and_decoding_match_the_reference(bool legacy)
    {
        var tokenizer = Build(legacy);
        Assert.Equal(TokenizerFormat.TokenizerJson, tokenizer.Format);
        Assert.Equal(1, tokenizer.BosTokenId);
        string[] texts = TokenizerReference.Texts;
        for (int i = 0; i < texts.Length; i++)
        {
            int[] expected = TokenizerReference.Ids(Folder, legacy ? "sentencepiece_ids" : "ids", i);
            Assert.Equal(expected, tokenizer.Encode(texts[i], addSpecialTokens: false));
            Assert.Equal([1, .. expected], tokenizer.Encode(texts[i]));
            string decoded = legacy ? texts[i] : TokenizerReference.For(Folder).GetProperty("decoded")[i].GetString()!;
            Assert.Equal(decoded, tokenizer.Decode(expected));
        }
    }
}
