using System.Text.Json.Nodes;
using Tern.Models;
using Tern.Runtime;
using Tern.Server;
using Tern.Serving;
using Tern.Tokenization;

namespace Tern.Tests.Serving;

/// <summary>
/// The llama-gqa fixture (2 layers, GQA, vocabulary 320, byte-level BPE with a ChatML template) copied to a temporary folder
/// with a 512-position context (by default), so that chat prompts and 64 concurrent requests fit; weights unchanged, fp32 on the CPU.
/// <see cref="ServeAsync"/> serves it on loopback.
/// </summary>
public sealed class ServingFixture : IDisposable, IAsyncDisposable
{
    /// <param name="chatTemplate">A chat template to use instead of the fixture's (e.g. one with tools).</param>
    /// <param name="context">The context (max_position_embeddings) the copy gets.</param>
    public ServingFixture(string? chatTemplate = null, int context = 512)
    {
        Directory.CreateDirectory(Folder);
        foreach (string file in Directory.GetFiles(Fixtures.ModelDir("llama-gqa")))
            File.Copy(file, Path.Combine(Folder, Path.GetFileName(file)));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(Folder, "config.json")))!;
        config["max_position_embeddings"] = context;
        File.WriteAllText(Path.Combine(Folder, "config.json"), config.ToJsonString());
        if (chatTemplate is not null)
        {
            var tokenizerConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(Folder, "tokenizer_config.json")))!;
            tokenizerConfig["chat_template"] = chatTemplate;
            File.WriteAllText(Path.Combine(Folder, "tokenizer_config.json"), tokenizerConfig.ToJsonString());
        }
        Model = CausalLanguageModel.Load(Folder, new ModelLoadOptions { Device = DeviceKind.Cpu });
        Tokenizer = TernTokenizer.Load(Folder);
    }

    public string Folder { get; } = Path.Combine(Path.GetTempPath(), "tern-serving-" + Guid.NewGuid().ToString("N"));
    public CausalLanguageModel Model { get; }
    public TernTokenizer Tokenizer { get; }

    /// <summary>Prompts of different lengths.</summary>
    public static readonly string[] Prompts =
    {
        "The quick brown fox", "Once upon a time there was", "A", "Hello, world! How are you today?", "1 2 3 4 5",
        "In the beginning", "Serving many requests at once is", "zebra",
    };

    /// <summary>The engine started by <see cref="ServeAsync"/>.</summary>
    public ServingEngine Engine { get; private set; } = null!;

    /// <summary>Starts an engine and a server on 127.0.0.1 (a free port unless <paramref name="server"/> names one); both are
    /// stopped by <see cref="DisposeAsync"/>.</summary>
    public async Task<TernServer> ServeAsync(ServingOptions serving, ServerOptions server, CancellationToken cancellation)
    {
        Engine = ServingEngine.Start(Model, Tokenizer, serving);
        return this.server = await TernServer.StartAsync(Engine, server, cancellation);
    }

    TernServer? server;

    public async ValueTask DisposeAsync()
    {
        if (server is not null) await server.DisposeAsync();
        Engine?.Dispose();
        Dispose();
    }

    public void Dispose()
    {
        Model.Dispose();
        Directory.Delete(Folder, recursive: true);
    }
}
