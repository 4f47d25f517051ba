using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Tern.Interop;

/// <summary>Raw addresses of tensor memory (libtorch's <c>data_ptr()</c>, storage offset included), for kernels and copies, and
/// the shapes of kernels' outputs.</summary>
internal static partial class TensorMemory
{
    [LibraryImport("LibTorchSharp", EntryPoint = "THSTensor_data")]
    private static partial IntPtr TensorData(IntPtr tensor);

    /// <summary>The address of <paramref name="tensor"/>'s first element.</summary>
    public static IntPtr Pointer(Tensor tensor) => TensorData(tensor.Handle);

    /// <summary><paramref name="tensor"/>'s sizes with the last one replaced by <paramref name="last"/>: the shape of a
    /// kernel's output. Read a dimension at a time: TorchSharp's <c>shape</c> fills its array through a native callback,
    /// ~40× the cost of <c>size(d)</c>, which a decode step's small kernels felt.</summary>
    public static long[] ShapeWithLast(Tensor tensor, long last)
    {
        var shape = new long[tensor.dim()];
        for (int d = 0; d < shape.Length - 1; d++) shape[d] = tensor.size(d);
        shape[^1] = last;
        return shape;
    }

    /// <summary>Whether <paramref name="tensor"/> lives on <paramref name="device"/>, by type and index: TorchSharp's
    /// <see cref="Device"/> compares by reference, so <c>tensor.device == device</c> does not hold for the same device.</summary>
    public static bool IsOn(Tensor tensor, Device device) => tensor.device_type == device.type && tensor.device_index == device.index;

    /// <summary>Bytes of a contiguous tensor.</summary>
    public static long Bytes(Tensor tensor) => tensor.NumberOfElements * tensor.ElementSize;
}
