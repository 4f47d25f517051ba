// Logits of a few token ids and a greedy continuation, through Tern's public API only.
using Tern.Generation;
using Tern.Models;

string modelDir = args.Length > 0 ? args[0] : "models/default";
using var model = CausalLanguageModel.Load(modelDir);

int[] ids = [33, 2734, 337];
float[][] logits = model.Logits(ids);
int Argmax(float[] row) => Array.IndexOf(row, row.Max());
for (int t = 0; t < ids.Length; t++)
    Console.WriteLine($"logits[{t}]: [{string.Join(", ", logits[t].Take(4).Select(x => x.ToString("F4")))}, ...] ({logits[t].Length} entries), argmax {Argmax(logits[t])}");

var result = new Generator(model).GenerateTokens([ids], new GenerationOptions { MaxNewTokens = 8, Temperature = 0, IgnoreEos = true });
var tokens = result.Sequences[0].Tokens;
Console.WriteLine($"greedy tokens: {string.Join(" ", tokens)}");

// The first generated token is the argmax of the last position's logits: both paths agree.
if (tokens[0] != Argmax(logits[^1]) || logits[^1].Any(x => !float.IsFinite(x)))
{
    Console.Error.WriteLine("consumer: logits and generation disagree");
    return 1;
}
Console.WriteLine("consumer: ok");
return 0;
