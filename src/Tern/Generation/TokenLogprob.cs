using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Generation;

/// <summary>A token's natural-log probability under the model and, when asked for, the most likely tokens at that position
/// (<see cref="Top"/>, most likely first; empty in the entries of <see cref="Top"/> themselves).</summary>
/// <remarks>Logprobs are of the raw model distribution — log-softmax of the logits before repetition penalty, temperature,
/// top-k/top-p and any <see cref="ITokenConstraint"/> (vLLM's default, <c>raw_logprobs</c>) — so they equal the scores
/// <see cref="Evaluation.TeacherForcing"/> gives the same text, whatever the sampling settings.</remarks>
public sealed record TokenLogprob(int TokenId, float Logprob, IReadOnlyList<TokenLogprob> Top)
{
    /// <summary>The most logprobs a request may ask for per position (OpenAI's top_logprobs limit).</summary>
    public const int MaxTop = 20;

    /// <summary>Each row's logprob of its target and its <paramref name="top"/> most likely tokens, from logits [n, vocab]
    /// and targets int64 [n] (one read-back).</summary>
    public static TokenLogprob[] FromLogits(Tensor logits, Tensor targets, int top)
    {
        using var scope = torch.NewDisposeScope();
        var logProbs = F.log_softmax(logits.to(ScalarType.Float32), -1);
        float[] chosen = logProbs.gather(1, targets.unsqueeze(1)).cpu().data<float>().ToArray();
        long[] ids = targets.cpu().data<long>().ToArray();
        int n = chosen.Length;
        float[] topValues = Array.Empty<float>();
        long[] topIds = Array.Empty<long>();
        if (top > 0)
        {
            var (values, indices) = logProbs.topk(top, -1);
            topValues = values.cpu().data<float>().ToArray();
            topIds = indices.cpu().data<long>().ToArray();
        }
        var result = new TokenLogprob[n];
        for (int i = 0; i < n; i++)
        {
            var alternatives = new TokenLogprob[top];
            for (int k = 0; k < top; k++) alternatives[k] = new TokenLogprob((int)topIds[i * top + k], topValues[i * top + k], Array.Empty<TokenLogprob>());
            result[i] = new TokenLogprob((int)ids[i], chosen[i], alternatives);
        }
        return result;
    }

    /// <summary>Scores a prompt as an echo does: entry t is token t given tokens 0..t−1 (entry 0, with no context, is null),
    /// from one forward pass over the whole prompt.</summary>
    public static TokenLogprob?[] ScorePrompt(Models.IStepModel model, IReadOnlyList<int> tokens, int top)
    {
        var scores = new TokenLogprob?[tokens.Count];
        if (tokens.Count < 2) return scores;
        using var scope = torch.NewDisposeScope();
        using var runner = model.CreateRunner(1, tokens.Count, tokens.Count, null);
        var logits = runner.Forward(Models.ForwardBatch.LeftPadded(new[] { tokens }, model.Device))[0]; // [T, V]
        var targets = torch.tensor(tokens.Skip(1).Select(t => (long)t).ToArray()).to(model.Device);
        FromLogits(logits.narrow(0, 0, tokens.Count - 1), targets, top).CopyTo(scores, 1);
        return scores;
    }
}
