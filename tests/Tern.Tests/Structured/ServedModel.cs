using System.ClientModel;
using System.ClientModel.Primitives;
using System.Net;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;
using Tern.Server;
using Tern.Serving;
using Tern.Tests.Serving;

namespace Tern.Tests.Structured;

/// <summary>A <see cref="ServingFixture"/> model served on loopback (model id "tiny", no API key) for one test class, with a
/// raw JSON client and the official OpenAI SDK's chat client.</summary>
public abstract class ServedModel(ServingFixture fixture, ServingOptions options) : IAsyncLifetime
{
    protected ServingFixture Fixture { get; } = fixture;
    protected TernServer Server { get; private set; } = null!;
    protected HttpClient Http { get; } = new();

    public async ValueTask InitializeAsync() => Server = await Fixture.ServeAsync(options, new ServerOptions { Port = 0, ModelId = "tiny" }, Ct);

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Fixture.DisposeAsync();
    }

    protected static CancellationToken Ct => TestContext.Current.CancellationToken;

    protected ChatClient Chat() => new("tiny", new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(Server.Address, "v1"), RetryPolicy = new ClientRetryPolicy(0) });

    /// <summary>POSTs a JSON body; the status and the parsed reply.</summary>
    protected async Task<(HttpStatusCode, JsonElement)> Post(string path, string json, Uri? address = null)
    {
        using var content = new StringContent(json, Encoding.UTF8, "application/json");
        using var response = await Http.PostAsync(new Uri(address ?? Server.Address, path), content, Ct);
        return (response.StatusCode, JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.Clone());
    }

    /// <summary>Asserts a chat request with these extra fields is refused with a 400 whose param is <paramref name="param"/>;
    /// returns the error's message.</summary>
    protected async Task<string> AssertRefused(string fields, string param, string path = "/v1/chat/completions", Uri? address = null)
    {
        string shape = path.Contains("chat") ? "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]" : "\"prompt\":\"hi\"";
        var (status, body) = await Post(path, $$"""{"model":"tiny",{{shape}},{{fields}}}""", address);
        Assert.True(status == HttpStatusCode.BadRequest, body.ToString());
        var error = body.GetProperty("error");
        Assert.Equal(param, error.GetProperty("param").GetString());
        return error.GetProperty("message").GetString()!;
    }
}
