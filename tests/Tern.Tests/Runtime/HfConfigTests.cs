using System.Text.Json.Nodes;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using TorchSharp;

namespace Tern.Tests.Runtime;

/// <summary>
/// config.json problems surface as <see cref="CheckpointException"/>s that name the file and the field: read through
/// <see cref="HfConfig"/>, and when a model is built from a config on disk with dummy weights.
/// </summary>
public sealed class HfConfigTests : IDisposable
{
    readonly string dir = Path.Combine(Path.GetTempPath(), "tern-config-tests", Guid.NewGuid().ToString("N"));

    public HfConfigTests() => Directory.CreateDirectory(dir);

    public void Dispose()
    {
        try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    string ConfigPath => Path.Combine(dir, "config.json");

    static JsonObject FixtureConfig(string fixture) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.ModelDir(fixture), "config.json")))!.AsObject();

    /// <summary>Writes the fixture's config.json after <paramref name="edit"/> to the temp folder, loads it and builds the
    /// model with dummy weights.</summary>
    CausalLanguageModel Build(string fixture, Action<JsonObject> edit)
    {
        var json = FixtureConfig(fixture);
        edit(json);
        File.WriteAllText(ConfigPath, json.ToJsonString());
        var config = HfConfig.Load(dir);
        using var weights = DummyWeightSource.Create();
        return CausalLanguageModel.Create(config, weights, torch.CPU, ModelDType.Float32);
    }

    /// <summary>Building must fail with a CheckpointException naming config.json's path and every fragment.</summary>
    CheckpointException BuildFails(string fixture, Action<JsonObject> edit, params string[] fragments)
    {
        var ex = Assert.Throws<CheckpointException>(() => Build(fixture, edit).Dispose());
        Assert.Contains(ConfigPath, ex.Message);
        foreach (string f in fragments) Assert.Contains(f, ex.Message);
        return ex;
    }

    [Fact]
    public void TheFixtureConfigsBuild()
    {
        foreach (string fixture in new[] { "llama-gqa", "gpt2", "neox-parallel", "opt-prenorm", "mistral-window", "qwen2" })
        {
            using var model = Build(fixture, _ => { });
            Assert.Equal(FixtureConfig(fixture)["model_type"]!.GetValue<string>(), model.Info.ModelType);
            Assert.Equal(ConfigPath, model.Config.Path);
        }
    }

    // ---------------------------------------------------------------- files

    [Fact]
    public void AMissingFolderOrFileIsNamed()
    {
        string missing = Path.Combine(dir, "nope");
        var ex = Assert.Throws<CheckpointException>(() => HfConfig.Load(missing));
        Assert.Contains(missing, ex.Message);
        var noFile = Assert.Throws<CheckpointException>(() => HfConfig.Load(dir));
        Assert.Contains(ConfigPath, noFile.Message);
        Assert.Contains("missing", noFile.Message);
    }

    [Theory]
    [InlineData("{ \"model_type\": \"llama\", ")]
    [InlineData("{ model_type: llama }")]
    [InlineData("")]
    [InlineData("\u0000")]
    public void InvalidJsonIsNamed(string text)
    {
        File.WriteAllText(ConfigPath, text);
        var ex = Assert.Throws<CheckpointException>(() => HfConfig.Load(dir));
        Assert.Contains(ConfigPath, ex.Message);
        Assert.Contains("not valid JSON", ex.Message);
    }

    [Theory]
    [InlineData("[1, 2]")]
    [InlineData("\"llama\"")]
    [InlineData("null")]
    public void ANonObjectIsRejected(string text)
    {
        File.WriteAllText(ConfigPath, text);
        var ex = Assert.Throws<CheckpointException>(() => HfConfig.Load(dir));
        Assert.Contains(ConfigPath, ex.Message);
        Assert.Contains("JSON object", ex.Message);
    }

    [Fact]
    public void CommentsAndTrailingCommasAreAccepted()
    {
        var config = HfConfig.Parse("{ // a comment\n \"vocab_size\": 5, }", "x/config.json");
        Assert.Equal(5, config.RequireInt("vocab_size"));
    }

    // ---------------------------------------------------------------- typed fields

    [Fact]
    public void TypedAccessorsReadWhatIsThere()
    {
        var c = HfConfig.Parse("""
            { "a": 3, "b": 3.0, "c": 0.5, "d": true, "e": "text", "f": [1, 2], "g": { "x": 1 }, "h": null }
            """, "p/config.json");
        Assert.Equal(3, c.GetInt("a"));
        Assert.Equal(3, c.GetInt("b"));
        Assert.Equal(0.5, c.GetDouble("c"));
        Assert.Equal(3.0, c.GetDouble("a"));
        Assert.True(c.GetBool("d"));
        Assert.Equal("text", c.GetString("e"));
        Assert.Equal(new[] { 1, 2 }, c.GetIntList("f"));
        Assert.Equal(new[] { 3 }, c.GetIntList("a"));
        Assert.Empty(c.GetIntList("missing"));
        Assert.NotNull(c.GetObject("g"));
        Assert.Null(c.GetInt("h"));
        Assert.Null(c.GetInt("missing"));
        Assert.False(c.Has("h"));
        Assert.True(c.Has("a"));
        Assert.Equal(3, c.RequireInt("zz", "a"));
    }

    [Theory]
    [InlineData("RequireInt", "vocab_size", "is missing")]
    [InlineData("int", "\"32\"", "must be an integer")]
    [InlineData("int", "32.5", "must be an integer")]
    [InlineData("int", "3e10", "must be an integer")]
    [InlineData("int", "true", "must be an integer")]
    [InlineData("int", "[32]", "must be a single value")]
    [InlineData("int", "{\"v\": 32}", "must be a single value")]
    [InlineData("double", "\"small\"", "must be a number")]
    [InlineData("bool", "\"yes\"", "must be true or false")]
    [InlineData("bool", "1", "must be true or false")]
    [InlineData("string", "5", "must be a string")]
    [InlineData("object", "5", "must be an object")]
    [InlineData("list", "[1, \"two\"]", "must be an integer")]
    public void AWrongFieldIsNamedWithTheFile(string accessor, string value, string problem)
    {
        var c = HfConfig.Parse(accessor == "RequireInt" ? "{}" : $"{{ \"field\": {value} }}", "/models/m/config.json");
        Action read = accessor switch
        {
            "RequireInt" => () => c.RequireInt(value),
            "int" => () => c.GetInt("field"),
            "double" => () => c.GetDouble("field"),
            "bool" => () => c.GetBool("field"),
            "string" => () => c.GetString("field"),
            "object" => () => c.GetObject("field"),
            "list" => () => c.GetIntList("field"),
            _ => throw new ArgumentException(accessor),
        };
        var ex = Assert.Throws<CheckpointException>(read);
        Assert.Contains("/models/m/config.json", ex.Message);
        Assert.Contains(accessor == "RequireInt" ? $"'{value}'" : "'field", ex.Message);
        Assert.Contains(problem, ex.Message);
    }

    [Fact]
    public void RequireIntWithAlternativesNamesThemAll()
    {
        var c = HfConfig.Parse("{}", "c.json");
        var ex = Assert.Throws<CheckpointException>(() => c.RequireInt("n_embd", "hidden_size"));
        Assert.Contains("'n_embd'", ex.Message);
        Assert.Contains("'hidden_size'", ex.Message);
    }

    // ---------------------------------------------------------------- building models

    [Theory]
    [InlineData("llama-gqa", "vocab_size")]
    [InlineData("llama-gqa", "hidden_size")]
    [InlineData("llama-gqa", "intermediate_size")]
    [InlineData("llama-gqa", "num_attention_heads")]
    [InlineData("gpt2", "n_embd")]
    [InlineData("gpt2", "n_positions")]
    [InlineData("neox-parallel", "intermediate_size")]
    [InlineData("opt-prenorm", "ffn_dim")]
    public void AMissingRequiredFieldIsNamed(string fixture, string field)
    {
        BuildFails(fixture, j => j.Remove(field), $"'{field}'", "missing");
    }

    [Theory]
    [InlineData("llama-gqa", "num_attention_heads", "\"4\"", "must be an integer")]
    [InlineData("llama-gqa", "rms_norm_eps", "\"tiny\"", "must be a number")]
    [InlineData("llama-gqa", "tie_word_embeddings", "\"no\"", "must be true or false")]
    [InlineData("llama-gqa", "hidden_act", "7", "must be a string")]
    [InlineData("llama-gqa", "rope_parameters", "7", "must be an object")]
    [InlineData("gpt2", "n_layer", "2.5", "must be an integer")]
    [InlineData("llama-gqa", "model_type", "5", "must be a string")]
    [InlineData("llama-gqa", "hidden_act", "\"tanh\"", "silu")]
    public void AFieldOfTheWrongTypeIsNamed(string fixture, string field, string value, string problem)
    {
        BuildFails(fixture, j => j[field] = JsonNode.Parse(value), $"'{field}'", problem);
    }

    [Fact]
    public void AnUnsupportedModelTypeListsTheSupportedOnes()
    {
        var ex = BuildFails("llama-gqa", j => j["model_type"] = "bert", "'bert'");
        foreach (string type in CausalLanguageModel.SupportedModelTypes) Assert.Contains(type, ex.Message);
        Assert.Equal(new[] { "llama", "mistral", "qwen2", "opt", "gpt_neox", "gpt2", "multihyena" }.Order(), CausalLanguageModel.SupportedModelTypes.Order());
    }

    [Fact]
    public void WithoutModelTypeOrArchitecturesTheTypeIsMissing()
    {
        BuildFails("llama-gqa", j => { j.Remove("model_type"); j.Remove("architectures"); }, "'model_type'", "missing");
    }

    /// <summary>HfConfig.ModelType is documented to be inferred from <c>architectures</c> when model_type is absent.</summary>
    [Theory]
    [InlineData("llama-gqa", "llama")]
    [InlineData("mistral-window", "mistral")]
    [InlineData("qwen2", "qwen2")]
    [InlineData("gpt2", "gpt2")]
    [InlineData("neox-parallel", "gpt_neox")]
    [InlineData("opt-prenorm", "opt")]
    public void TheModelTypeIsInferredFromArchitectures(string fixture, string expected)
    {
        using var model = Build(fixture, j => j.Remove("model_type"));
        Assert.Equal(expected, model.Info.ModelType);
    }

    [Fact]
    public void AnArchitectureOfTheWrongTypeIsNamed()
    {
        BuildFails("llama-gqa", j => { j.Remove("model_type"); j["architectures"] = new JsonArray(5); }, "architectures");
    }

    [Theory]
    [InlineData("rope_parameters")]
    [InlineData("rope_scaling")]
    public void AnUnsupportedRopeTypeIsAClearError(string field)
    {
        var ex = BuildFails("llama-gqa", j =>
        {
            j.Remove("rope_parameters");
            j[field] = field == "rope_parameters"
                ? new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0, ["rope_theta"] = 10000.0, ["original_max_position_embeddings"] = 32 }
                : new JsonObject { ["type"] = "yarn", ["factor"] = 4.0, ["original_max_position_embeddings"] = 32 };
        }, $"'{field}'", "'yarn'", "default, linear, llama3");
        Assert.Contains("not support", ex.Message);
    }

    [Fact]
    public void Llama3RopeWithoutItsParametersIsNamed()
    {
        BuildFails("llama-gqa", j => j["rope_parameters"] = new JsonObject { ["rope_type"] = "llama3", ["factor"] = 8.0 },
            "'rope_parameters'", "llama3", "low_freq_factor");
    }

    [Theory]
    [InlineData(4, 3)]
    [InlineData(4, 8)]
    [InlineData(4, 0)]
    [InlineData(4, -2)]
    public void KeyValueHeadsThatDoNotDivideTheHeadsAreRejected(int heads, int kvHeads)
    {
        BuildFails("llama-gqa", j =>
        {
            j["num_attention_heads"] = heads;
            j["num_key_value_heads"] = kvHeads;
        }, "'num_key_value_heads'");
    }

    /// <summary>GPT-2, GPT-NeoX and OPT split hidden_size evenly over the heads (transformers refuses such configs);
    /// a config where it does not divide must be refused when the model is built, naming the field.</summary>
    [Theory]
    [InlineData("gpt2", "n_embd", "n_head")]
    [InlineData("neox-parallel", "hidden_size", "num_attention_heads")]
    [InlineData("opt-prenorm", "hidden_size", "num_attention_heads")]
    public void AHiddenSizeTheHeadsDoNotDivideIsRejected(string fixture, string hiddenField, string headsField)
    {
        BuildFails(fixture, j =>
        {
            j[hiddenField] = 30;
            j[headsField] = 4;
            if (fixture == "opt-prenorm") j["word_embed_proj_dim"] = 30;
        }, headsField);
    }
}
