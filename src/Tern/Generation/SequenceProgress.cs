using Tern.Models;
using Tern.Tokenization;

namespace Tern.Generation;

/// <summary>
/// The host-side state of one sequence being generated: its tokens, the text the streaming detokenizer has completed, and
/// the stopping rules (stop ids, stop strings). Shared by <see cref="Generator"/> and the serving engine.
/// </summary>
internal sealed class SequenceProgress
{
    readonly StreamingDecoder? decoder;
    readonly IReadOnlyList<string> stopStrings;
    readonly ISet<int> stopIds;
    readonly int longestStop;

    /// <param name="decoder">Detokenizer when text is needed while generating (streaming or stop strings), else null.</param>
    public SequenceProgress(StreamingDecoder? decoder, IReadOnlyList<string> stopStrings, ISet<int> stopIds)
    {
        if (stopStrings.Count > 0 && decoder is null) throw new ArgumentException("stop strings need a tokenizer to decode text.");
        this.decoder = decoder;
        this.stopStrings = stopStrings;
        this.stopIds = stopIds;
        longestStop = stopStrings.Count == 0 ? 0 : stopStrings.Max(x => x.Length);
    }

    /// <summary>The stop ids of a request: explicit ids always count; <see cref="GenerationOptions.IgnoreEos"/> drops only the
    /// end-of-sequence ids (the tokenizer's, else the model config's).</summary>
    public static HashSet<int> StopIds(GenerationOptions options, TernTokenizer? tokenizer, IStepModel model) =>
        options.StopTokenIds is { } explicitIds ? new HashSet<int>(explicitIds)
            : options.IgnoreEos ? new HashSet<int>()
            : new HashSet<int>(tokenizer?.EosTokenIds ?? model.Config.GetIntList("eos_token_id"));

    /// <summary>Tokens generated so far.</summary>
    public List<int> Tokens { get; } = new();

    /// <summary>The generated tokens' logprobs, when the request asks for them (null otherwise).</summary>
    List<TokenLogprob>? logprobs;

    /// <summary>The prompt's scores, when the request asks for them (<see cref="GenerationOptions.PromptLogprobs"/>).</summary>
    public IReadOnlyList<TokenLogprob?>? PromptLogprobs { get; set; }

    /// <summary>Text so far (cut before a stop string once one appears); empty without a detokenizer.</summary>
    public string Text { get; private set; } = "";

    /// <summary>Why the sequence stopped, or null while it runs (reaching the token limit is the caller's to decide).</summary>
    public FinishReason? Finished { get; private set; }

    /// <summary>Records a token; returns the text it releases: what the detokenizer completed, less any tail that could still
    /// turn out to start a stop string (held back until it cannot, or until the sequence ends), so streamed text never shows
    /// part of a stop string. <paramref name="lastToken"/> flushes everything held back.</summary>
    public string Push(int id, bool lastToken, TokenLogprob? logprob = null)
    {
        Tokens.Add(id);
        if (logprob is not null) (logprobs ??= new()).Add(logprob);
        if (decoder is null)
        {
            if (stopIds.Contains(id)) Finished = FinishReason.StopToken;
            return "";
        }
        string delta = decoder.Push(id);
        bool ends = lastToken || stopIds.Contains(id);
        if (ends) delta += decoder.Flush();
        int searchFrom = Math.Max(0, Text.Length - longestStop);
        Text += delta;
        foreach (string stop in stopStrings)
        {
            int at = Text.IndexOf(stop, searchFrom, StringComparison.Ordinal);
            if (at < 0) continue;
            Text = Text[..at];
            Finished = FinishReason.StopString;
            break;
        }
        if (Finished is null && stopIds.Contains(id)) Finished = FinishReason.StopToken;
        int release = ends || Finished is not null ? Text.Length : Text.Length - PossibleStopStart();
        string released = release > emitted ? Text[emitted..release] : "";
        emitted = Math.Max(emitted, release);
        return released;
    }

    int emitted; // characters of Text returned by Push so far

    /// <summary>Length of the longest tail of <see cref="Text"/> that is a proper prefix of a stop string.</summary>
    int PossibleStopStart()
    {
        int longest = 0;
        foreach (string stop in stopStrings)
            for (int k = Math.Min(stop.Length - 1, Text.Length); k > longest; k--)
                if (string.CompareOrdinal(Text, Text.Length - k, stop, 0, k) == 0)
                {
                    longest = k;
                    break;
                }
        return longest;
    }

    /// <summary>The output: the text is the one cut at the stop string, else the decoded tokens (null without a tokenizer).</summary>
    public SequenceOutput Output(IReadOnlyList<int> prompt, TernTokenizer? tokenizer) =>
        new(prompt, Tokens, tokenizer is null ? null : Finished == FinishReason.StopString ? Text : tokenizer.Decode(Tokens),
            Finished ?? FinishReason.Length, logprobs, PromptLogprobs);
}
