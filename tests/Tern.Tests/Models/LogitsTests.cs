using Tern.Models;

namespace Tern.Tests.Models;

/// <summary><see cref="CausalLanguageModel.Logits"/>: the one-call API gives transformers' logits as host arrays.</summary>
public class LogitsTests
{
    [Fact]
    public void LogitsOfTokenIdsMatchTransformers()
    {
        using var model = HfParityContract.LoadFixture("llama-gqa");
        using var reference = HfParityContract.Reference.Load(Fixtures.ModelDir("llama-gqa"));
        int[] ids = reference.Prompts[0].Select(x => (int)x).ToArray();

        float[][] logits = model.Logits(ids);

        Assert.Equal(ids.Length, logits.Length);
        float[] expected = reference.Logits[0].data<float>().ToArray();
        int vocab = logits[0].Length;
        Assert.Equal(expected.Length, ids.Length * vocab);
        for (int t = 0; t < ids.Length; t++)
            for (int v = 0; v < vocab; v++)
                Assert.True(Math.Abs(logits[t][v] - expected[t * vocab + v]) <= 1e-4, $"position {t}, token {v}");
        Assert.Throws<ArgumentException>(() => model.Logits([]));
    }
}
