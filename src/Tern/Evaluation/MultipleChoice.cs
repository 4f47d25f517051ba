using System.Text.RegularExpressions;
using Tern.Caching;
using Tern.Models;
using Tern.Tokenization;

namespace Tern.Evaluation;

/// <summary>One multiple-choice question: a context and the continuations to rank.</summary>
public sealed record ChoiceItem(string Context, IReadOnlyList<string> Choices, int Answer);

/// <summary>A named set of questions.</summary>
public sealed record ChoiceTask(string Name, IReadOnlyList<ChoiceItem> Items);

/// <summary>Accuracy of a task, in lm-eval's two readings.</summary>
/// <param name="Accuracy">The choice with the largest summed log-likelihood is the answer (lm-eval's <c>acc</c>).</param>
/// <param name="NormalizedAccuracy">The same with the log-likelihood divided by the choice's length in bytes (<c>acc_norm</c>).</param>
public sealed record ChoiceResult(string Task, int Items, double Accuracy, double NormalizedAccuracy);

/// <summary>
/// A multiple-choice harness in the style of EleutherAI's lm-evaluation-harness: each choice is scored by the sum of the log
/// probabilities of its tokens after the context, here through <see cref="TeacherForcing"/> so that a KV policy sees the
/// context as a prompt and the choice as generated tokens; and cloze tasks built from any held-out text.
/// </summary>
public static partial class MultipleChoice
{
    /// <summary>Scores every item of <paramref name="task"/> (the choices of an item run as one batch).</summary>
    public static ChoiceResult Evaluate(CausalLanguageModel model, TernTokenizer tokenizer, ChoiceTask task, KvPolicyOptions? policy = null,
        IProgress<double>? progress = null, CancellationToken cancellation = default)
    {
        int correct = 0, correctNormalized = 0;
        for (int i = 0; i < task.Items.Count; i++)
        {
            var item = task.Items[i];
            var context = tokenizer.Encode(item.Context, addSpecialTokens: false);
            var choices = item.Choices.Select(c => tokenizer.Encode(c, addSpecialTokens: false)).ToArray();
            var sequences = choices.Select(c => (IReadOnlyList<int>)context.Concat(c).ToArray()).ToArray();
            var scores = TeacherForcing.Score(model, sequences, new TeacherForcingOptions { PrefixLength = context.Count }.WithKvPolicy(policy ?? new KvPolicyOptions()), cancellation);
            var loglik = choices.Select((c, b) => scores.LogProbs[b].Take(c.Count).Sum(x => (double)x)).ToArray();
            var perByte = loglik.Select((l, b) => l / Math.Max(1, System.Text.Encoding.UTF8.GetByteCount(item.Choices[b]))).ToArray();
            if (ArgMax(loglik) == item.Answer) correct++;
            if (ArgMax(perByte) == item.Answer) correctNormalized++;
            progress?.Report((i + 1.0) / task.Items.Count);
        }
        return new ChoiceResult(task.Name, task.Items.Count, (double)correct / task.Items.Count, (double)correctNormalized / task.Items.Count);
    }

    static int ArgMax(double[] values) => Array.IndexOf(values, values.Max());

    /// <summary>
    /// A cloze task from a held-out text: at <paramref name="items"/> random word boundaries, the context is the
    /// <paramref name="contextChars"/> characters before it, the answer the next <paramref name="words"/> words, and the
    /// distractors <paramref name="words"/>-word spans from elsewhere in the text. Every choice is written the same way (one
    /// leading space, single spaces) so that layout gives nothing away. Seeded: the same text gives the same questions.
    /// </summary>
    public static ChoiceTask Cloze(string name, string text, int items, int contextChars = 2000, int words = 6, int choices = 4, int seed = 1234)
    {
        if (choices < 2) throw new ArgumentException($"a question needs at least two choices (got {choices}).");
        var boundaries = WordStart().Matches(text).Select(m => m.Index).Where(i => i >= contextChars).ToArray();
        if (boundaries.Length < items * 2) throw new ArgumentException($"{name}: the text is too short for {items} questions with {contextChars} characters of context.");
        var random = new Random(seed);
        string Span(int start) => " " + string.Join(' ', text[start..].Split((char[]?)null, words + 1, StringSplitOptions.RemoveEmptyEntries).Take(words));
        var list = new List<ChoiceItem>();
        while (list.Count < items)
        {
            int at = boundaries[random.Next(boundaries.Length)];
            string answer = Span(at);
            if (answer.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length < words) continue;
            var options = new List<string> { answer };
            while (options.Count < choices)
            {
                int other = boundaries[random.Next(boundaries.Length)];
                string distractor = Span(other);
                if (Math.Abs(other - at) > contextChars && !options.Contains(distractor) && distractor.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length == words)
                    options.Add(distractor);
            }
            int answerIndex = random.Next(choices);
            (options[0], options[answerIndex]) = (options[answerIndex], options[0]);
            list.Add(new ChoiceItem(text[(at - contextChars)..at].TrimEnd(), options, answerIndex));
        }
        return new ChoiceTask(name, list);
    }

    // A word starts after whitespace (not at the very start: it needs a context before it).
    [GeneratedRegex(@"(?<=\s)\S")]
    private static partial Regex WordStart();
}
