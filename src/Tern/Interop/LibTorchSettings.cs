using System.Runtime.InteropServices;

namespace Tern.Interop;

/// <summary>
/// libtorch switches that TorchSharp 0.107 does not expose, reached through libtorch's exported C++ symbols.
/// </summary>
internal static unsafe class LibTorchSettings
{
    /// <summary>
    /// Turns off the cuDNN back-end of scaled_dot_product_attention. On libtorch 2.11 it builds a new plan for every new
    /// key length, about 3 ms per call in a decode loop (platform notes); flash and memory-efficient kernels need no plan.
    /// Calls <c>at::globalContext().setSDPUseCuDNN(false)</c>. Returns false when the symbols are not found (older libtorch).
    /// </summary>
    public static bool DisableCudnnAttention()
    {
        foreach (string lib in new[] { "libtorch_cpu.so", "libtorch_cpu" })
        {
            if (!NativeLibrary.TryLoad(lib, out IntPtr handle)) continue;
            if (!NativeLibrary.TryGetExport(handle, "_ZN2at13globalContextEv", out IntPtr globalContext)) return false;
            if (!NativeLibrary.TryGetExport(handle, "_ZN2at7Context14setSDPUseCuDNNEb", out IntPtr setUseCudnn)) return false;
            IntPtr context = ((delegate* unmanaged<IntPtr>)globalContext)();
            ((delegate* unmanaged<IntPtr, byte, void>)setUseCudnn)(context, 0);
            return true;
        }
        return false;
    }
}
