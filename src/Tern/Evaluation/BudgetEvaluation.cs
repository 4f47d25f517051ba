using Tern.Caching;
using Tern.Models;

namespace Tern.Evaluation;

/// <summary>One policy at one KV budget, against the full cache on the same sequences.</summary>
/// <param name="Agreement">Fraction of scored positions where the policy's most likely next token is the full cache's.</param>
public sealed record BudgetPoint(string Policy, double Budget, double MeanNll, double Agreement, long Tokens)
{
    /// <summary>exp(mean NLL).</summary>
    public double Perplexity => Math.Exp(MeanNll);
}

/// <summary>
/// H2O's budget experiment (Zhang et al. 2023, fig. 4/5): sequences of the model's context are fed one token at a time under a
/// KV policy whose budget is a fraction of the sequence, and perplexity and next-token agreement with the full cache are
/// reported as the budget shrinks.
/// </summary>
public static class BudgetEvaluation
{
    /// <summary>The full-cache run every point is compared with.</summary>
    public static TeacherForcingResult Reference(CausalLanguageModel model, IReadOnlyList<IReadOnlyList<int>> sequences,
        IProgress<double>? progress = null, CancellationToken cancellation = default) =>
        TeacherForcing.Score(model, sequences, new TeacherForcingOptions { Progress = progress }, cancellation);

    /// <summary>Scores <paramref name="sequences"/> under the KV-cache policy <paramref name="policy"/> names and compares with
    /// <paramref name="reference"/>.</summary>
    public static BudgetPoint Run(CausalLanguageModel model, IReadOnlyList<IReadOnlyList<int>> sequences, TeacherForcingResult reference,
        KvPolicyOptions policy, string label, double budget, IProgress<double>? progress = null, CancellationToken cancellation = default)
    {
        var scores = TeacherForcing.Score(model, sequences, new TeacherForcingOptions { Progress = progress }.WithKvPolicy(policy), cancellation);
        double nll = 0;
        long tokens = 0, agree = 0;
        for (int b = 0; b < sequences.Count; b++)
            for (int j = 0; j < scores.LogProbs[b].Length; j++)
            {
                if (float.IsNaN(scores.LogProbs[b][j])) continue;
                nll -= scores.LogProbs[b][j];
                tokens++;
                if (scores.Argmax[b][j] == reference.Argmax[b][j]) agree++;
            }
        return new BudgetPoint(label, budget, nll / tokens, (double)agree / tokens, tokens);
    }

    /// <summary><paramref name="count"/> sequences of <paramref name="length"/> tokens taken evenly spaced from the text.</summary>
    public static IReadOnlyList<IReadOnlyList<int>> Sequences(IReadOnlyList<int> tokens, int count, int length)
    {
        if (count < 1 || length < 2) throw new ArgumentException($"need at least one sequence of two tokens (got {count} of {length}).");
        if ((long)count * length > tokens.Count)
            throw new ArgumentException($"the text has {tokens.Count:N0} tokens: too few for {count} sequences of {length}.");
        long stride = tokens.Count / count;
        return Enumerable.Range(0, count).Select(i => (IReadOnlyList<int>)tokens.Skip((int)(i * stride)).Take(length).ToArray()).ToArray();
    }
}
