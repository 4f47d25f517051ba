using System.CommandLine;
using System.Runtime.InteropServices;

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
        var command = new Command(Name, "Talk with a model (type /exit to leave, /reset to start over; Ctrl+C stops a reply).") { system };
        common.AddTo(command);
        sampling.AddTo(command);
        kv.AddTo(command);
        command.SetAction((r, _) => RunAsync(r, common, sampling, kv, system));
        return command;
    }

    /// <summary>The command's name: it handles Ctrl+C itself (<see cref="Program"/> leaves signals to it), to stop a reply only.</summary>
    public const string Name = "chat";

    static async Task<int> RunAsync(ParseResult r, CommonOptions common, SamplingOptions sampling, KvPolicyFlags kv, Option<string?> systemOption)
    {
        var options = sampling.Read(r).WithKvPolicy(kv.Read(r));
        var (model, tokenizer, folder) = common.Load(r, needTokenizer: true);
        using (model)
        {
            var formatter = tokenizer!.CreateChatFormatter();
            if (formatter.UsesFallback)
                Console.Error.WriteLine($"note: {formatter.Template.Warning ?? "no chat template"}; using a plain 'User:/Assistant:' layout.");
            Console.Error.WriteLine($"chatting with {folder} ({model.Info.ModelType}); /exit leaves, /reset forgets the conversation, " +
                "Ctrl+C stops a reply (at the prompt: leaves).");
            using var session = new ChatSession(model, tokenizer, formatter, options, r.GetValue(systemOption));
            // Cancelling the signals keeps the runtime from ending the process: Ctrl+C stops the reply, SIGTERM the session.
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; session.Interrupt(); });
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; session.End(); });
            await session.RunAsync(Console.In, Console.Out, Console.Error);
            return 0;
        }
    }
}
