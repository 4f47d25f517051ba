using Tern.Runtime;

namespace Tern.Tests.Models;

/// <summary>The HF parity contract on the CPU in fp32: max |Δlogit| ≤ 1e-4 and identical greedy tokens.</summary>
public sealed class CpuHfParityTests : HfParityContract
{
    protected override DeviceKind Device => DeviceKind.Cpu;
}

/// <summary>transformers 5's per-layer <c>layer_types</c> decides which layers use the sliding window.</summary>
public sealed class LayerTypesTests
{
    static double MaxDiffWithLayerTypes(string layerType)
    {
        string dir = Directory.CreateTempSubdirectory("tern-layer-types-").FullName;
        try
        {
            foreach (var f in Directory.GetFiles(Fixtures.ModelDir("mistral-window"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
            config["layer_types"] = new System.Text.Json.Nodes.JsonArray(layerType, layerType);
            File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
            using var model = Tern.Models.CausalLanguageModel.Load(dir, new Tern.Models.ModelLoadOptions { Device = DeviceKind.Cpu });
            using var reference = HfParityContract.Reference.Load(Fixtures.ModelDir("mistral-window"));
            using var logits = HfParityContract.FullLogits(model, new[] { reference.Prompts[1] });
            return HfParityContract.MaxAbsDiff(logits[0], reference.Logits[1]);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void SlidingLayersMatchTheWindowedReference() => Assert.True(MaxDiffWithLayerTypes("sliding_attention") <= 1e-4);

    [Fact]
    public void FullLayersIgnoreTheWindow() => Assert.True(MaxDiffWithLayerTypes("full_attention") > 1e-3); // the 12-token prompt outruns the window of 5
}
