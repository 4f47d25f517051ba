using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Checkpoints;

/// <summary>
/// Where a model's parameters come from: a Hugging Face checkpoint folder (<see cref="CheckpointReader"/>) or
/// generated dummy weights (<see cref="DummyWeightSource"/>). Models ask for each parameter by its Hugging Face
/// name and the shape their config implies; a source must refuse a mismatch with a message naming the file.
/// </summary>
public interface IWeightSource : IDisposable
{
    /// <summary>A short description for messages ("model.safetensors in /models/x", "dummy weights").</summary>
    string Description { get; }

    /// <summary>True when the source holds a tensor of that name.</summary>
    bool Contains(string name);

    /// <summary>
    /// The named tensor converted to <paramref name="dtype"/> on <paramref name="device"/>, as a new tensor the caller owns.
    /// Throws <see cref="CheckpointException"/> when the tensor is missing or its shape differs from <paramref name="expectedShape"/>.
    /// </summary>
    Tensor Load(string name, long[] expectedShape, ScalarType dtype, Device device);
}

/// <summary>A checkpoint or config that cannot be used, with a message that names the file or field and the fix.</summary>
public sealed class CheckpointException : Exception
{
    public CheckpointException(string message) : base(message) { }
    public CheckpointException(string message, Exception inner) : base(message, inner) { }
}
