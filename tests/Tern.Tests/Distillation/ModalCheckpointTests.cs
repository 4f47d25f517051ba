using Tern.Checkpoints;
using Tern.Distillation;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Distillation;

/// <summary>The distilled folder: round trip, and the bad input (missing or unstable poles refused by layer and filter).</summary>
public sealed class ModalCheckpointTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), $"tern-modal-{Guid.NewGuid():N}");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void SavedBanksLoadBackExactly()
    {
        var layers = new[]
        {
            new DistilledLayer(0, DistillationTestData.RandomBank(3, 4, seed: 10), new[] { 1e-3, 2e-3, 3e-3 }),
            new DistilledLayer(2, DistillationTestData.RandomBank(2, 1, seed: 11, realPole: true), new[] { 0.5, 0.25 }),
        };
        ModalCheckpoint.Save(_dir, layers);
        var loaded = ModalCheckpoint.Load(_dir, new[] { 0, 2 });
        foreach (var layer in layers)
        {
            var bank = loaded[layer.Layer];
            Assert.Equal(layer.Filters.Modes, bank.Modes);
            Assert.Equal(layer.Filters.Poles, bank.Poles);
            Assert.Equal(layer.Filters.Residues, bank.Residues);
            Assert.Equal(layer.Filters.Direct, bank.Direct);
        }
        Assert.Contains("\"max_relative_error\": 0.5", File.ReadAllText(Path.Combine(_dir, ModalCheckpoint.ReportFile)));
        var missing = Assert.Throws<InvalidDataException>(() => ModalCheckpoint.Load(_dir, new[] { 1 }));
        Assert.Contains("layer 1: no poles (layers.1.poles is missing)", missing.Message);
    }

    [Fact]
    public void AFolderWithUnstableOrMissingPolesIsRefusedWithTheLayerAndFilterNamed()
    {
        using var scope = torch.NewDisposeScope();
        var metadata = new Dictionary<string, string> { ["convention"] = ModalCheckpoint.Convention };
        var poles = torch.tensor(new[] { 0.5, 0.1, 0.9, 0.0, 0.7, 0.2, 1.1, 0.3 }, ScalarType.Float64).view(2, 2, 2); // filter 1, mode 1: |λ| > 1
        var residues = torch.ones(2, 2, 2, ScalarType.Float64);
        var direct = torch.zeros(2, ScalarType.Float64);
        SafetensorsWriter.Write(Path.Combine(_dir, ModalCheckpoint.WeightsFile),
            new[] { ("layers.4.poles", poles), ("layers.4.residues", residues), ("layers.4.direct", direct), ("layers.5.residues", residues), ("layers.5.direct", direct) },
            metadata);
        var unstable = Assert.Throws<InvalidDataException>(() => ModalCheckpoint.Load(_dir, new[] { 4 }));
        Assert.Contains("layer 4, filter 1: pole 1 has |λ| = ", unstable.Message);
        var missing = Assert.Throws<InvalidDataException>(() => ModalCheckpoint.Load(_dir, new[] { 5 }));
        Assert.Contains("layer 5: no poles", missing.Message);
        Assert.Contains("is missing", Assert.Throws<InvalidDataException>(() => ModalCheckpoint.Load(Path.Combine(_dir, "none"), new[] { 0 })).Message);
    }
}
