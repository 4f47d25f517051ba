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

    [LibraryImport(Library, EntryPoint = "cuCtxGetCurrent")]
    private static partial int CuCtxGetCurrent(out IntPtr context);

    [LibraryImport(Library, EntryPoint = "cuDeviceGetAttribute")]
    private static partial int CuDeviceGetAttribute(out int value, int attribute, int device);

    [LibraryImport(Library, EntryPoint = "cuModuleLoadData")]
    private static unsafe partial int CuModuleLoadData(out IntPtr module, byte* image);

    [LibraryImport(Library, EntryPoint = "cuModuleGetFunction", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int CuModuleGetFunction(out IntPtr function, IntPtr module, string name);

    [LibraryImport(Library, EntryPoint = "cuLaunchKernel")]
    private static unsafe partial int CuLaunchKernel(IntPtr function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, IntPtr stream, void** parameters, void** extra);

    /// <summary>Makes the primary context of GPU 0 (the one libtorch uses) current on this thread if none is.</summary>
    public static void EnsureContext()
    {
        Check(CuInit(0), "cuInit");
        if (CuCtxGetCurrent(out IntPtr current) == 0 && current != IntPtr.Zero) return;
        Check(CuDeviceGet(out int dev, 0), "cuDeviceGet");
        Check(CuDevicePrimaryCtxRetain(out IntPtr ctx, dev), "cuDevicePrimaryCtxRetain");
        Check(CuCtxSetCurrent(ctx), "cuCtxSetCurrent");
    }

    /// <summary>Compute capability of GPU 0, e.g. (9, 0).</summary>
    public static (int Major, int Minor) ComputeCapability()
    {
        Check(CuInit(0), "cuInit");
        Check(CuDeviceGet(out int dev, 0), "cuDeviceGet");
        Check(CuDeviceGetAttribute(out int major, 75, dev), "cuDeviceGetAttribute");
        Check(CuDeviceGetAttribute(out int minor, 76, dev), "cuDeviceGetAttribute");
        return (major, minor);
    }

    /// <summary>Loads a CUBIN or PTX image and returns the named kernels.</summary>
    public static unsafe IntPtr[] LoadKernels(byte[] image, IEnumerable<string> names)
    {
        EnsureContext();
        IntPtr module;
        fixed (byte* p = image) Check(CuModuleLoadData(out module, p), "cuModuleLoadData");
        return names.Select(n =>
        {
            Check(CuModuleGetFunction(out IntPtr f, module, n), "cuModuleGetFunction " + n);
            return f;
        }).ToArray();
    }

    /// <summary>Launches a kernel; <paramref name="parameters"/> points to an array of pointers to each argument.</summary>
    public static unsafe void Launch(IntPtr function, uint grid, uint block, IntPtr stream, void** parameters) =>
        Launch(function, grid, 1, block, stream, parameters);

    /// <summary>Launches a kernel on a two-dimensional grid.</summary>
    public static unsafe void Launch(IntPtr function, uint gridX, uint gridY, uint block, IntPtr stream, void** parameters) =>
        Check(CuLaunchKernel(function, gridX, gridY, 1, block, 1, 1, 0, stream, parameters, null), "cuLaunchKernel");

    static void Check(int result, string call)
    {
        if (result != 0) throw new InvalidOperationException($"CUDA driver call {call} failed with error {result}.");
    }

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
