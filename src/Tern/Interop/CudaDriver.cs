using System.Runtime.InteropServices;

namespace Tern.Interop;

/// <summary>The few CUDA driver API calls Tern needs beyond TorchSharp, bound to libcuda.so.1 (present wherever the NVIDIA driver is).</summary>
internal static partial class CudaDriver
{
    const string Library = "libcuda.so.1";

    [LibraryImport(Library, EntryPoint = "cuInit")]
    private static partial int CuInit(uint flags);

    [LibraryImport(Library, EntryPoint = "cuMemGetInfo_v2")]
    private static partial int CuMemGetInfo(out nuint free, out nuint total);

    [LibraryImport(Library, EntryPoint = "cuDeviceGet")]
    private static partial int CuDeviceGet(out int device, int ordinal);

    [LibraryImport(Library, EntryPoint = "cuDeviceGetName")]
    private static unsafe partial int CuDeviceGetName(byte* name, int length, int device);

    [LibraryImport(Library, EntryPoint = "cuDevicePrimaryCtxRetain")]
    private static partial int CuDevicePrimaryCtxRetain(out IntPtr context, int device);

    [LibraryImport(Library, EntryPoint = "cuCtxSetCurrent")]
    private static partial int CuCtxSetCurrent(IntPtr context);

    /// <summary>Free and total bytes of GPU 0, or null when no driver is reachable.</summary>
    public static (long Free, long Total)? MemoryInfo()
    {
        try
        {
            if (CuMemGetInfo(out nuint free, out nuint total) != 0)
            {
                // No current context on this thread: use the device's primary context, the one libtorch uses.
                if (CuInit(0) != 0 || CuDeviceGet(out int dev, 0) != 0 || CuDevicePrimaryCtxRetain(out IntPtr ctx, dev) != 0 || CuCtxSetCurrent(ctx) != 0)
                    return null;
                if (CuMemGetInfo(out free, out total) != 0) return null;
            }
            return ((long)free, (long)total);
        }
        catch (DllNotFoundException)
        {
            return null;
        }
        catch (EntryPointNotFoundException)
        {
            return null;
        }
    }

    /// <summary>Name of GPU 0 ("NVIDIA H100 80GB HBM3"), or null.</summary>
    public static unsafe string? DeviceName()
    {
        try
        {
            if (CuInit(0) != 0 || CuDeviceGet(out int dev, 0) != 0) return null;
            byte* buffer = stackalloc byte[256];
            return CuDeviceGetName(buffer, 256, dev) == 0 ? Marshal.PtrToStringAnsi((IntPtr)buffer) : null;
        }
        catch (DllNotFoundException)
        {
            return null;
        }
    }
}
