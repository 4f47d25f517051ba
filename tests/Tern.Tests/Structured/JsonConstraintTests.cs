using System.Text.Json;
using System.Text.Json.Nodes;
using Json.Schema;
using Tern.Generation;
using Tern.Models;
using Tern.Runtime;
using Tern.Serving;
using Tern.Structured;
using Tern.Tests.Serving;
using Tern.Tokenization;

namespace Tern.Tests.Structured;

/// <summary>
/// Constrained decoding (<see cref="JsonConstraint"/>): 50 generated schemas on the default model (greedy, through the serving
/// engine's continuous batch) and 25 on a random-weight model (sampled at temperature 1, through the generator) — every reply
/// parses and validates against its schema (JsonSchema.Net), also when max_tokens barely fits the document; length and number
/// bounds hold; json_object replies always parse; unsupported keywords and impossible bounds are refused naming them.
/// </summary>
public sealed class JsonConstraintTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static string DefaultModelDir => Path.GetFullPath(Path.Combine(Fixtures.Root, "..", "..", "models", "default"));

    static void AssertValid(JsonObject schema, SequenceOutput output, string where)
    {
        string text = output.Text!;
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(text);
        }
        catch (JsonException e)
        {
            throw new Xunit.Sdk.XunitException($"{where}: the reply is not JSON ({e.Message}), finish {output.FinishReason}: {text}\nschema: {schema.ToJsonString()}");
        }
        using (document)
        {
            var result = JsonSchema.FromText(schema.ToJsonString()).Evaluate(document.RootElement, new EvaluationOptions { OutputFormat = OutputFormat.List });
            Assert.True(result.IsValid, $"{where}: {text}\nschema: {schema.ToJsonString()}\nerrors: {string.Join("; ", (result.Details ?? []).Where(d => d.Errors is not null).SelectMany(d => d.Errors!.Values))}");
        }
    }

    [Fact]
    public async Task FiftySchemasOnTheDefaultModelAlwaysParseAndValidate()
    {
        using var model = CausalLanguageModel.Load(DefaultModelDir, new ModelLoadOptions { Device = DeviceKind.Cpu });
        var tokenizer = TernTokenizer.Load(DefaultModelDir);
        using var engine = ServingEngine.Start(model, tokenizer, new ServingOptions { MaxBatchSize = 16 });
        var schemas = JsonSchemas.Generate(50, seed: 18);
        var requests = schemas.Select((schema, i) =>
        {
            var constraint = JsonConstraint.ForSchema(JsonDocument.Parse(schema.ToJsonString()).RootElement, tokenizer);
            // Some budgets barely hold the smallest document: it must still close.
            int max = i % 5 == 4 ? constraint.MinDocumentBytes + 2 : Math.Max(160, constraint.MinDocumentBytes + 40);
            return engine.Submit("The answer, as JSON:", new GenerationOptions { MaxNewTokens = max, Constraint = constraint }, Ct);
        }).ToArray();
        for (int i = 0; i < schemas.Count; i++) AssertValid(schemas[i], await requests[i].Completion, $"schema {i}");
    }

    [Fact]
    public void RandomWeightsCannotBreakTheSchemaNorJsonObject()
    {
        using var fixture = new ServingFixture(); // random weights, byte-level BPE of 320 tokens
        var generator = new Generator(fixture.Model, fixture.Tokenizer);
        var schemas = JsonSchemas.Generate(25, seed: 7);
        for (int i = 0; i < schemas.Count; i++)
        {
            var constraint = JsonConstraint.ForSchema(JsonDocument.Parse(schemas[i].ToJsonString()).RootElement, fixture.Tokenizer);
            var options = new GenerationOptions { MaxNewTokens = constraint.MinDocumentBytes + 10 * (i % 4), Temperature = 1, Seed = i, Constraint = constraint };
            AssertValid(schemas[i], generator.Generate(new[] { "Hello" }, options, Ct).Sequences[0], $"schema {i}");
        }
        var anyObject = new JsonObject { ["type"] = "object" };
        for (int seed = 0; seed < 10; seed++)
        {
            var options = new GenerationOptions { MaxNewTokens = 60, Temperature = 1, Seed = seed, Constraint = JsonConstraint.Object(fixture.Tokenizer) };
            AssertValid(anyObject, generator.Generate(new[] { "Hello" }, options, Ct).Sequences[0], $"json_object {seed}");
        }
    }

    [Fact]
    public void MasksAreCachedByState()
    {
        using var fixture = new ServingFixture();
        var constraint = JsonConstraint.ForSchema(JsonDocument.Parse("""{"type":"object","properties":{"a":{"type":"array","items":{"type":"integer"}}},"required":["a"],"additionalProperties":false}""").RootElement, fixture.Tokenizer);
        var generator = new Generator(fixture.Model, fixture.Tokenizer);
        var options = new GenerationOptions { MaxNewTokens = 40, Temperature = 1, Seed = 1, Constraint = constraint };
        var first = generator.Generate(new[] { "Hello" }, options, Ct).Sequences[0];
        var (hits, misses) = constraint.CacheStats;
        var again = generator.Generate(new[] { "Hello" }, options, Ct).Sequences[0];
        Assert.Equal(first.Tokens, again.Tokens);
        Assert.Equal(misses, constraint.CacheStats.Misses); // every state met again is a look-up
        Assert.True(constraint.CacheStats.Hits >= hits + first.Tokens.Count);
    }

    /// <summary>Length and number bounds at their edges (tight, one-sided, exclusive, either sign, far from zero), sampled at
    /// temperature 1 on random weights with budgets from the document's fewest bytes up: every reply validates.</summary>
    [Theory]
    [InlineData("""{"type":"string","minLength":3,"maxLength":3}""")]
    [InlineData("""{"type":"string","minLength":7}""")]
    [InlineData("""{"type":"string","maxLength":2}""")]
    [InlineData("""{"type":"array","items":{"type":"string","minLength":1,"maxLength":4},"minItems":2,"maxItems":3}""")]
    [InlineData("""{"type":"integer","minimum":10,"maximum":20}""")]
    [InlineData("""{"type":"integer","minimum":-7,"maximum":-3}""")]
    [InlineData("""{"type":"integer","exclusiveMinimum":-1,"exclusiveMaximum":1}""")]
    [InlineData("""{"type":"integer","minimum":1000}""")]
    [InlineData("""{"type":"integer","maximum":-1000}""")]
    [InlineData("""{"type":"integer","minimum":0.5,"maximum":99.5}""")]
    [InlineData("""{"type":"integer","minimum":-1000000000000000000,"maximum":-999999999999999990}""")]
    [InlineData("""{"type":"object","properties":{"n":{"type":["integer","null"],"minimum":5,"exclusiveMaximum":9},"s":{"type":"string","minLength":2}},"required":["n","s"],"additionalProperties":false}""")]
    [InlineData("""{"type":"number","minimum":0.25,"maximum":0.3}""")]
    [InlineData("""{"type":"number","exclusiveMinimum":-1.5,"exclusiveMaximum":-1.4}""")]
    [InlineData("""{"type":"number","minimum":100.5}""")]
    [InlineData("""{"type":"number","exclusiveMaximum":0}""")]
    [InlineData("""{"type":"number","minimum":-0.001,"maximum":0.001}""")]
    [InlineData("""{"type":"number","exclusiveMinimum":2,"maximum":2.0001}""")]
    [InlineData("""{"type":"array","items":{"type":"number","minimum":-3,"exclusiveMaximum":3.5},"minItems":3,"maxItems":3}""")]
    public void BoundsHoldInEveryReply(string schema)
    {
        using var fixture = new ServingFixture();
        var generator = new Generator(fixture.Model, fixture.Tokenizer);
        var node = JsonNode.Parse(schema)!.AsObject();
        var constraint = JsonConstraint.ForSchema(JsonDocument.Parse(schema).RootElement, fixture.Tokenizer);
        for (int seed = 0; seed < 12; seed++)
        {
            var options = new GenerationOptions { MaxNewTokens = constraint.MinDocumentBytes + 4 * (seed % 4), Temperature = 1, Seed = seed, Constraint = constraint };
            AssertValid(node, generator.Generate(new[] { "Hello" }, options, Ct).Sequences[0], $"seed {seed}");
        }
    }

    [Fact]
    public void Draft4BooleanExclusiveBoundsAreHonoured()
    {
        using var fixture = new ServingFixture();
        var constraint = JsonConstraint.ForSchema(JsonDocument.Parse("""{"type":"integer","minimum":3,"exclusiveMinimum":true,"maximum":5,"exclusiveMaximum":true}""").RootElement, fixture.Tokenizer);
        var options = new GenerationOptions { MaxNewTokens = 4, Temperature = 1, Seed = 1, Constraint = constraint };
        Assert.Equal("4", new Generator(fixture.Model, fixture.Tokenizer).Generate(new[] { "Hello" }, options, Ct).Sequences[0].Text);
    }

    [Theory]
    [InlineData("""{"type":"string","pattern":"^a"}""", "pattern")]
    [InlineData("""{"type":"object","properties":{"n":{"type":"number","maximum":1e13}}}""", "maximum")]
    [InlineData("""{"type":"number","exclusiveMinimum":1,"exclusiveMaximum":1}""", "exclusiveMinimum")]
    [InlineData("""{"type":"number","minimum":0.0000000000001,"maximum":0.0000000000009}""", "minimum")]
    [InlineData("""{"type":"string","minLength":5,"maxLength":4}""", "minLength")]
    [InlineData("""{"type":"integer","minimum":3,"exclusiveMaximum":3}""", "minimum")]
    [InlineData("""{"type":"integer","exclusiveMinimum":2.5,"maximum":2.9}""", "exclusiveMinimum")]
    [InlineData("""{"minLength":2}""", "minLength")]
    [InlineData("""{"type":"string","enum":["a"],"maxLength":3}""", "maxLength")]
    [InlineData("""{"type":"integer","maximum":1e19}""", "maximum")]
    [InlineData("""{"type":"string","maxLength":-1}""", "maxLength")]
    [InlineData("""{"allOf":[{"type":"string"}]}""", "allOf")]
    [InlineData("""{"$defs":{"T":{"type":"array","items":{"$ref":"#/$defs/T"}}},"$ref":"#/$defs/T"}""", "$ref")]
    [InlineData("""{"type":"object","required":["x"]}""", "required")]
    public void UnsupportedKeywordsAreRefusedByName(string schema, string keyword)
    {
        using var fixture = new ServingFixture();
        var e = Assert.Throws<UnsupportedSchemaException>(() => JsonConstraint.ForSchema(JsonDocument.Parse(schema).RootElement, fixture.Tokenizer));
        Assert.Equal(keyword, e.Keyword);
        Assert.Contains(keyword, e.Message);
    }
}
