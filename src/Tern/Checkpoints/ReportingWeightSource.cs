using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Checkpoints;

/// <summary>A weight source that reports the fraction of <paramref name="total"/> elements loaded so far (a model load's
/// progress; capped at 1, as a model may read fewer or more elements than counted, e.g. tied embeddings).</summary>
internal sealed class ReportingWeightSource(IWeightSource source, long total, IProgress<double> progress) : IWeightSource
{
    long loaded;

    public string Description => source.Description;

    public bool Contains(string name) => source.Contains(name);

    public Tensor Load(string name, long[] expectedShape, ScalarType dtype, Device device)
    {
        var tensor = source.Load(name, expectedShape, dtype, device);
        loaded += tensor.NumberOfElements;
        if (total > 0) progress.Report(Math.Min(1.0, (double)loaded / total));
        return tensor;
    }

    public void Dispose() => source.Dispose();
}
