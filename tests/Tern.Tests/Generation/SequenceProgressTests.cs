using Tern.Generation;
using Tern.Tokenization;

namespace Tern.Tests.Generation;

/// <summary>Streamed text and stop strings: what is released never shows part of a stop string, held-back text that turns
/// out not to start one is released later, and the last token flushes everything.</summary>
public sealed class SequenceProgressTests
{
    readonly TernTokenizer tokenizer = TernTokenizer.Load(Fixtures.ModelDir("llama-gqa"));

    (string Streamed, SequenceProgress Progress) Feed(string text, params string[] stops)
    {
        var ids = tokenizer.Encode(text, addSpecialTokens: false);
        var progress = new SequenceProgress(tokenizer.CreateStreamingDecoder(), stops, new HashSet<int>());
        string streamed = "";
        for (int i = 0; i < ids.Count && progress.Finished is null; i++)
        {
            string delta = progress.Push(ids[i], lastToken: i == ids.Count - 1);
            foreach (string stop in stops) Assert.DoesNotContain(stop, streamed + delta);
            streamed += delta;
        }
        return (streamed, progress);
    }

    [Theory]
    [InlineData("hello world, hello there", "o t", "hello world, hell")]
    [InlineData("hello world, hello there", "lo w", "hel")]
    [InlineData("the cat sat on the mat", "xyz", "the cat sat on the mat")]
    [InlineData("aaab", "aab", "a")]
    public void ReleasedTextNeverShowsAStopString(string text, string stop, string expected)
    {
        var (streamed, progress) = Feed(text, stop);
        Assert.Equal(expected, streamed);
        Assert.Equal(expected, progress.Text);
        Assert.Equal(expected.Length < text.Length ? FinishReason.StopString : null, progress.Finished);
    }

    [Fact]
    public void HeldBackTextIsReleasedOnceItCannotStartAStop()
    {
        // "wor" could start "world!" until the comma arrives; all of it streams by the end.
        var (streamed, progress) = Feed("hello wor, world", "world!");
        Assert.Equal("hello wor, world", streamed);
        Assert.Null(progress.Finished);
    }
}
