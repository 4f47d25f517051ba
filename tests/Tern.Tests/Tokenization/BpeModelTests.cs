using System.Text.Json;
using Tern.Tokenization;

namespace Tern.Tests.Tokenization;

/// <summary>Tern's own HF-style BPE (used for SentencePiece and byte-fallback models) against Microsoft.ML.Tokenizers on byte-level vocabularies.</summary>
public class BpeModelTests
{
    public static TheoryData<string> ByteLevelFolders => new() { "neox-tokenizer-json", "llama3-tokenizer-json" };

    [Theory]
    [MemberData(nameof(ByteLevelFolders))]
    public void Ranked_bpe_matches_ml_tokenizers_on_byte_level_pieces(string folder)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Fixtures.TokenizerDir(folder), "tokenizer.json")));
        var model = doc.RootElement.GetProperty("model");
        var vocab = model.GetProperty("vocab").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt32());
        var merges = model.GetProperty("merges").EnumerateArray()
            .Select(m => m.ValueKind == JsonValueKind.String ? (m.GetString()!.Split(' ')[0], m.GetString()!.Split(' ')[1]) : (m[0].GetString()!, m[1].GetString()!))
            .ToList();
        var ml = new MlByteLevelBpeModel(vocab, merges, null, null, null, false, false);
        var ours = new RankedBpeModel(vocab, merges, byteLevel: true, null, false, false, false);
        var words = TokenizerReference.Texts.SelectMany(t => t.Split(' ')).Append("   ").Append("\n\n\n").Where(w => w.Length > 0);
        foreach (string word in words)
        {
            var a = new List<int>();
            var b = new List<int>();
            ml.Encode(word, a);
            ours.Encode(word, b);
            Assert.Equal(a, b);
        }
    }
}
