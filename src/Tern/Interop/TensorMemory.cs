using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Tern.Interop;

/// <summary>Raw addresses of tensor memory (libtorch's <c>data_ptr()</c>, storage offset included), for kernels and copies.</summary>
internal static partial class TensorMemory
{
    [LibraryImport("LibTorchSharp", EntryPoint = "THSTensor_data")]
    private static partial IntPtr TensorData(IntPtr tensor);

    /// <summary>The address of <paramref name="tensor"/>'s first element.</summary>
    public static IntPtr Pointer(Tensor tensor) => TensorData(tensor.Handle);

    /// <summary>Bytes of a contiguous tensor.</summary>
    public static long Bytes(Tensor tensor) => tensor.NumberOfElements * tensor.ElementSize;
}
