using Tern.Cli.Commands;
using Tern.Generation;
using Tern.Tests.Serving;

namespace Tern.Tests.Cli;

/// <summary><c>tern chat</c>'s loop (issue 18: Ctrl+C during a reply ended the whole session, exit 1): an interrupt stops the
/// reply being streamed and the conversation goes on; an interrupt at the prompt ends the session.</summary>
public sealed class ChatSessionTests
{
    /// <summary>Keeps each string written (prompts, tokens) and calls <paramref name="onWrite"/> with its number first.</summary>
    sealed class WatchingWriter(Action<int> onWrite) : StringWriter
    {
        public readonly List<string> Writes = new();
        public override void Write(string? value)
        {
            Writes.Add(value ?? "");
            onWrite(Writes.Count);
            base.Write(value);
        }
    }

    /// <summary>A console nobody types into: ReadLine blocks until the test ends.</summary>
    sealed class SilentReader : TextReader
    {
        public readonly ManualResetEventSlim Reading = new();
        public override string? ReadLine()
        {
            Reading.Set();
            Thread.Sleep(Timeout.Infinite);
            return null;
        }
    }

    static ChatSession Session(ServingFixture fixture, int maxNewTokens) => new(fixture.Model, fixture.Tokenizer,
        fixture.Tokenizer.CreateChatFormatter(), new GenerationOptions { MaxNewTokens = maxNewTokens, IgnoreEos = true }, "Be brief.");

    [Fact]
    public async Task AReplyInterruptedMidStreamLeavesTheSessionUsable()
    {
        using var fixture = new ServingFixture();
        ChatSession? session = null;
        // Write 1 is the prompt "> ", writes 2.. the first reply's tokens: interrupt after its second token.
        var output = new WatchingWriter(n => { if (n == 4) session!.Interrupt(); });
        using (session = Session(fixture, 24))
        {
            await session.RunAsync(new StringReader("Hello\nAnd now?\n"), output, TextWriter.Null).WaitAsync(TestContext.Current.CancellationToken);
            Assert.Equal(new[] { "system", "user", "assistant", "user", "assistant" }, session.History.Select(m => m.Role));
            // Writes: "> ", three tokens (the interrupt came before the third was written), " [stopped]", "> ", 24 tokens, "> ".
            Assert.Equal(new[] { "> ", " [stopped]", "> " }, output.Writes.Skip(4).Take(1).Prepend(output.Writes[0]).Append(output.Writes[5]));
            Assert.Equal(24, output.Writes.Count - 7);
            Assert.Equal("> ", output.Writes[^1]);
            Assert.Equal(string.Concat(output.Writes.Skip(1).Take(3)), session.History[2].Content);
            Assert.Equal(string.Concat(output.Writes.Skip(6).Take(24)), session.History[4].Content);
        }
    }

    [Fact]
    public async Task AnInterruptAtThePromptEndsTheSession()
    {
        using var fixture = new ServingFixture();
        using var session = Session(fixture, 4);
        var input = new SilentReader();
        var run = session.RunAsync(input, TextWriter.Null, TextWriter.Null);
        Assert.True(input.Reading.Wait(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken));
        session.Interrupt();
        await run.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal("system", Assert.Single(session.History).Role);
    }

    static bool CanOpenPseudoTerminal()
    {
        if (!File.Exists("/usr/bin/script")) return false;
        using var probe = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("script", ["-q", "-e", "-c", "true", "/dev/null"])
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
        })!;
        return probe.WaitForExit(10_000) && probe.ExitCode == 0;
    }

    /// <summary>A real <c>tern chat</c> process: SIGINT during a reply stops it (the next prompt is answered), SIGINT at the
    /// prompt ends the session with exit 0 — sent by <c>kill</c>, or as a user sends it: Ctrl+C typed into the pseudo-terminal
    /// the session runs in (util-linux's <c>script</c> makes one; its line discipline turns ^C into SIGINT).</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task SigintStopsTheReplyThenEndsTheSessionAtThePrompt(bool pseudoTerminal)
    {
        if (!OperatingSystem.IsLinux()) return;
        Assert.SkipWhen(pseudoTerminal && !CanOpenPseudoTerminal(), "util-linux's script cannot open a pseudo-terminal here");
        var ct = TestContext.Current.CancellationToken;
        using var fixture = new ServingFixture();
        // A context long enough that no reply ends before the signal.
        string config = Path.Combine(fixture.Folder, "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"max_position_embeddings\":512", "\"max_position_embeddings\":100000"));
        Assert.Contains("100000", File.ReadAllText(config));
        // SIGINT back to its default in the child: a test run started as a background job (`cmd &` without job control)
        // inherits SIGINT ignored, and a process that starts with it ignored never sees Ctrl+C (as a background job should not).
        string[] chat = { "env", "--default-signal=INT", "dotnet", Path.Combine(AppContext.BaseDirectory, "Tern.Cli.dll"), "chat", "--model", fixture.Folder,
            "--device", "cpu", "--max-new-tokens", "90000", "--ignore-eos" };
        var start = new System.Diagnostics.ProcessStartInfo(pseudoTerminal ? "script" : chat[0])
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        // `script` runs the command through $SHELL (/bin/sh where unset, as under CI): `exec`, so that no shell stays in the
        // terminal's foreground group to die of the Ctrl+C that the session handles.
        var arguments = pseudoTerminal ? new[] { "-q", "-f", "-e", "-c", "exec " + string.Join(' ', chat.Select(a => $"'{a}'")), "/dev/null" } : chat.Skip(1);
        foreach (string a in arguments) start.ArgumentList.Add(a);
        start.Environment["DOTNET_GCgen0size"] = "0x10000000";
        using var process = System.Diagnostics.Process.Start(start)!;
        try
        {
            var output = new System.Text.StringBuilder();
            var reading = Task.Run(async () =>
            {
                var buffer = new char[4096];
                int n;
                while ((n = await process.StandardOutput.ReadAsync(buffer, ct)) > 0) lock (output) output.Append(buffer, 0, n);
            }, ct);
            var errors = process.StandardError.ReadToEndAsync(ct);
            string Output() { lock (output) return output.ToString(); }
            async Task Until(Func<string, bool> condition)
            {
                var deadline = DateTime.UtcNow.AddSeconds(60);
                while (!condition(Output()))
                {
                    Assert.True(DateTime.UtcNow < deadline, $"timed out; output so far: {Output()}");
                    await Task.Delay(50, ct);
                }
            }
            async Task Interrupt()
            {
                if (!pseudoTerminal)
                {
                    System.Diagnostics.Process.Start("kill", new[] { "-INT", process.Id.ToString() })!.WaitForExit();
                    return;
                }
                await process.StandardInput.WriteAsync('\x03'); // Ctrl+C, as typed
                await process.StandardInput.FlushAsync(ct);
            }

            // A line as typed: Enter is a carriage return in a terminal (its line discipline makes it a newline).
            async Task Say(string line)
            {
                int before = Output().Length;
                await process.StandardInput.WriteAsync(line + (pseudoTerminal ? "\r" : "\n"));
                await process.StandardInput.FlushAsync(ct);
                await Until(o => o.Length > before + line.Length + 40); // the reply streaming
            }

            await Until(o => o.EndsWith("> ", StringComparison.Ordinal));
            await Say("Hello");
            await Interrupt();
            await Until(o => o.Contains("[stopped]") && o.EndsWith("> ", StringComparison.Ordinal));
            await Say("Again");
            await Interrupt();
            await Until(o => o.Split("[stopped]").Length == 3 && o.EndsWith("> ", StringComparison.Ordinal));
            await Interrupt();
            await process.WaitForExitAsync(ct).WaitAsync(TimeSpan.FromSeconds(30), ct);
            Assert.True(process.ExitCode == 0, await errors);
            await reading;
        }
        finally
        {
            if (!process.HasExited) process.Kill();
        }
    }
}
