using System.CommandLine;
using System.Text;
using Tern.Generation;
using Tern.Tokenization;

namespace Tern.Cli.Commands;

/// <summary><c>tern chat</c>: an interactive conversation, streamed token by token, formatted with the model's chat template.</summary>
internal static class ChatCommand
{
    public static Command Create()
    {
        var common = new CommonOptions();
        var sampling = new SamplingOptions();
        var kv = new KvPolicyFlags();
        var system = new Option<string?>("--system") { Description = "System prompt." };
        var command = new Command("chat", "Talk with a model (type /exit to leave, /reset to start over; Ctrl+C stops a reply).") { system };
        common.AddTo(command);
        sampling.AddTo(command);
        kv.AddTo(command);
        command.SetAction((r, cancellation) => RunAsync(r, common, sampling, kv, system, cancellation));
        return command;
    }

    static async Task<int> RunAsync(ParseResult r, CommonOptions common, SamplingOptions sampling, KvPolicyFlags kv, Option<string?> systemOption, CancellationToken cancellation)
    {
        var options = sampling.Read(r).WithKvPolicy(kv.Read(r));
        var (model, tokenizer, folder) = common.Load(r, needTokenizer: true);
        using (model)
        {
            var formatter = tokenizer!.CreateChatFormatter();
            if (formatter.UsesFallback)
                Console.Error.WriteLine($"note: {formatter.Template.Warning ?? "no chat template"}; using a plain 'User:/Assistant:' layout.");
            Console.Error.WriteLine($"chatting with {folder} ({model.Info.ModelType}); /exit leaves, /reset forgets the conversation.");
            var generator = new Generator(model, tokenizer);
            var history = new List<ChatMessage>();
            string? systemPrompt = r.GetValue(systemOption);
            if (!string.IsNullOrEmpty(systemPrompt)) history.Add(new ChatMessage("system", systemPrompt));
            while (!cancellation.IsCancellationRequested)
            {
                Console.Write("> ");
                string? line = Console.ReadLine();
                if (line is null || line.Trim() == "/exit") break;
                if (line.Trim() == "/reset")
                {
                    history.RemoveAll(m => m.Role != "system");
                    continue;
                }
                if (line.Trim().Length == 0) continue;
                history.Add(new ChatMessage("user", line));
                var prompt = tokenizer.Encode(formatter.Format(history, addGenerationPrompt: true), addSpecialTokens: false);
                var reply = new StringBuilder();
                // Ctrl+C ends this reply only; a second one during input leaves.
                using var replyCancel = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
                ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; replyCancel.Cancel(); };
                Console.CancelKeyPress += onCancel;
                try
                {
                    await foreach (var token in generator.StreamAsync(new[] { prompt }, options, replyCancel.Token))
                    {
                        Console.Write(token.Text);
                        reply.Append(token.Text);
                    }
                }
                catch (OperationCanceledException) when (!cancellation.IsCancellationRequested)
                {
                    Console.Write(" [stopped]");
                }
                finally
                {
                    Console.CancelKeyPress -= onCancel;
                }
                Console.WriteLine();
                history.Add(new ChatMessage("assistant", reply.ToString()));
            }
            return 0;
        }
    }
}
