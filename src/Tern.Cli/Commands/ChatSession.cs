using System.Text;
using Tern.Generation;
using Tern.Models;
using Tern.Tokenization;

namespace Tern.Cli.Commands;

/// <summary>
/// The conversation loop of <c>tern chat</c>, apart from the console and its signals: prompts are read from a reader, replies
/// streamed to a writer. <see cref="Interrupt"/> (Ctrl+C) stops the reply being streamed — the conversation goes on — or, at
/// the prompt, ends the session.
/// </summary>
internal sealed class ChatSession(IStepModel model, TernTokenizer tokenizer, ChatFormatter formatter, GenerationOptions options, string? systemPrompt)
    : IDisposable
{
    readonly Generator generator = new(model, tokenizer);
    readonly CancellationTokenSource ended = new();
    readonly object gate = new();
    CancellationTokenSource? reply; // set while a reply streams

    /// <summary>The conversation so far (the system prompt first, when given).</summary>
    public List<ChatMessage> History { get; } = string.IsNullOrEmpty(systemPrompt) ? new() : new() { new ChatMessage("system", systemPrompt) };

    /// <summary>Ctrl+C: stops the reply being streamed, or ends the session when none is.</summary>
    public void Interrupt()
    {
        lock (gate)
        {
            if (reply is not null) reply.Cancel();
            else ended.Cancel();
        }
    }

    /// <summary>Ends the session, a reply in flight included (SIGTERM).</summary>
    public void End()
    {
        lock (gate)
        {
            ended.Cancel();
            reply?.Cancel();
        }
    }

    /// <summary>Talks until /exit, the end of <paramref name="input"/>, or <see cref="Interrupt"/> at the prompt;
    /// notes (context caps, a conversation too long) go to <paramref name="notes"/>.</summary>
    public async Task RunAsync(TextReader input, TextWriter output, TextWriter notes)
    {
        while (!ended.IsCancellationRequested)
        {
            output.Write("> ");
            output.Flush();
            string? line;
            try
            {
                // ReadLine cannot be cancelled: the session stops waiting for it (an abandoned read dies with the process).
                line = await Task.Run(input.ReadLine).WaitAsync(ended.Token);
            }
            catch (OperationCanceledException)
            {
                output.WriteLine();
                break;
            }
            if (line is null || line.Trim() == "/exit") break;
            if (line.Trim() == "/reset")
            {
                History.RemoveAll(m => m.Role != "system");
                continue;
            }
            if (line.Trim().Length == 0) continue;
            History.Add(new ChatMessage("user", line));
            var prompt = tokenizer.Encode(formatter.Format(History, addGenerationPrompt: true), addSpecialTokens: false);
            if (prompt.Count >= model.Info.MaxPositions)
            {
                History.RemoveAt(History.Count - 1);
                notes.WriteLine($"tern: the conversation has {prompt.Count} tokens but the model's context is {model.Info.MaxPositions} " +
                    "(max_position_embeddings); /reset forgets it, or write a shorter message.");
                continue;
            }
            if (ContextCap.Note(model.Info, prompt.Count, options) is { } note) notes.WriteLine(note);
            History.Add(new ChatMessage("assistant", await ReplyAsync(prompt, output)));
        }
    }

    async Task<string> ReplyAsync(IReadOnlyList<int> prompt, TextWriter output)
    {
        var text = new StringBuilder();
        using var cancel = new CancellationTokenSource();
        lock (gate)
        {
            if (ended.IsCancellationRequested) return "";
            reply = cancel;
        }
        try
        {
            await foreach (var token in generator.StreamAsync(new[] { prompt }, options, cancel.Token))
            {
                output.Write(token.Text);
                output.Flush();
                text.Append(token.Text);
            }
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            output.Write(" [stopped]");
        }
        finally
        {
            lock (gate) reply = null;
        }
        output.WriteLine();
        return text.ToString();
    }

    /// <summary>Releases the session's cancellation source.</summary>
    public void Dispose() => ended.Dispose();
}
