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

    [LibraryImport(Library, EntryPoint = "cuOccupancyMaxActiveBlocksPerMultiprocessor")]
    private static partial int CuOccupancyMaxActiveBlocksPerMultiprocessor(out int blocks, IntPtr function, int blockSize, nuint dynamicSharedBytes);

    [LibraryImport(Library, EntryPoint = "cuModuleLoadData")]
    private static unsafe partial int CuModuleLoadData(out IntPtr module, byte* image);

    [LibraryImport(Library, EntryPoint = "cuModuleGetFunction", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int CuModuleGetFunction(out IntPtr function, IntPtr module, string name);

    [LibraryImport(Library, EntryPoint = "cuLaunchKernel")]
    private static unsafe partial int CuLaunchKernel(IntPtr function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, IntPtr stream, void** parameters, void** extra);

    [LibraryImport(Library, EntryPoint = "cuStreamCreate")]
    private static partial int CuStreamCreate(out IntPtr stream, uint flags);

    [LibraryImport(Library, EntryPoint = "cuStreamDestroy_v2")]
    private static partial int CuStreamDestroy(IntPtr stream);

    [LibraryImport(Library, EntryPoint = "cuStreamSynchronize")]
    private static partial int CuStreamSynchronize(IntPtr stream);

    [LibraryImport(Library, EntryPoint = "cuStreamWaitEvent")]
    private static partial int CuStreamWaitEvent(IntPtr stream, IntPtr evt, uint flags);

    [LibraryImport(Library, EntryPoint = "cuEventCreate")]
    private static partial int CuEventCreate(out IntPtr evt, uint flags);

    [LibraryImport(Library, EntryPoint = "cuEventRecord")]
    private static partial int CuEventRecord(IntPtr evt, IntPtr stream);

    [LibraryImport(Library, EntryPoint = "cuEventSynchronize")]
    private static partial int CuEventSynchronize(IntPtr evt);

    [LibraryImport(Library, EntryPoint = "cuEventDestroy_v2")]
    private static partial int CuEventDestroy(IntPtr evt);

    [LibraryImport(Library, EntryPoint = "cuMemcpyAsync")]
    private static partial int CuMemcpyAsync(IntPtr destination, IntPtr source, nuint bytes, IntPtr stream);

    [LibraryImport(Library, EntryPoint = "cuMemHostRegister_v2")]
    private static partial int CuMemHostRegister(IntPtr pointer, nuint bytes, uint flags);

    [LibraryImport(Library, EntryPoint = "cuMemHostUnregister")]
    private static partial int CuMemHostUnregister(IntPtr pointer);

    /// <summary>Page-locks host memory in place (no copy, no rounding of the size); false when the driver refuses (for example
    /// a range that shares pages with one already registered).</summary>
    public static bool TryRegisterHostMemory(IntPtr pointer, long bytes)
    {
        EnsureContext();
        return CuMemHostRegister(pointer, (nuint)bytes, 0) == 0;
    }

    /// <summary>Undoes <see cref="TryRegisterHostMemory"/>.</summary>
    public static void UnregisterHostMemory(IntPtr pointer) => Check(CuMemHostUnregister(pointer), "cuMemHostUnregister");

    /// <summary>A new stream that does not synchronise with the legacy default stream (CU_STREAM_NON_BLOCKING).</summary>
    public static IntPtr CreateNonBlockingStream()
    {
        EnsureContext();
        Check(CuStreamCreate(out IntPtr stream, 1), "cuStreamCreate");
        return stream;
    }

    /// <summary>Destroys a stream made by <see cref="CreateNonBlockingStream"/> (its queued work still completes).</summary>
    public static void DestroyStream(IntPtr stream) => Check(CuStreamDestroy(stream), "cuStreamDestroy");

    /// <summary>Blocks the host until <paramref name="stream"/>'s work is done.</summary>
    public static void SynchronizeStream(IntPtr stream) => Check(CuStreamSynchronize(stream), "cuStreamSynchronize");

    /// <summary>An event without timing (CU_EVENT_DISABLE_TIMING), the cheap kind for ordering.</summary>
    public static IntPtr CreateEvent()
    {
        EnsureContext();
        Check(CuEventCreate(out IntPtr evt, 2), "cuEventCreate");
        return evt;
    }

    /// <summary>Records <paramref name="evt"/> at the current end of <paramref name="stream"/>'s queue.</summary>
    public static void RecordEvent(IntPtr evt, IntPtr stream) => Check(CuEventRecord(evt, stream), "cuEventRecord");

    /// <summary>Makes <paramref name="stream"/>'s later work wait for <paramref name="evt"/> (no host block).</summary>
    public static void StreamWaitEvent(IntPtr stream, IntPtr evt) => Check(CuStreamWaitEvent(stream, evt, 0), "cuStreamWaitEvent");

    /// <summary>Blocks the host until <paramref name="evt"/> has completed.</summary>
    public static void SynchronizeEvent(IntPtr evt) => Check(CuEventSynchronize(evt), "cuEventSynchronize");

    /// <summary>Destroys an event.</summary>
    public static void DestroyEvent(IntPtr evt) => Check(CuEventDestroy(evt), "cuEventDestroy");

    /// <summary>Queues a copy of <paramref name="bytes"/> between any two addresses of the unified address space (device memory,
    /// pinned host memory; pageable host memory makes the call synchronous) on <paramref name="stream"/>.</summary>
    public static void CopyAsync(IntPtr destination, IntPtr source, long bytes, IntPtr stream) =>
        Check(CuMemcpyAsync(destination, source, (nuint)bytes, stream), "cuMemcpyAsync");

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

    /// <summary>How many blocks of <paramref name="blockSize"/> threads of a kernel run at once on all of GPU 0's
    /// multiprocessors: one wave of the grid.</summary>
    public static int ResidentBlocks(IntPtr function, int blockSize)
    {
        Check(CuDeviceGet(out int dev, 0), "cuDeviceGet");
        Check(CuDeviceGetAttribute(out int multiprocessors, 16, dev), "cuDeviceGetAttribute"); // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
        Check(CuOccupancyMaxActiveBlocksPerMultiprocessor(out int blocks, function, blockSize, 0), "cuOccupancyMaxActiveBlocksPerMultiprocessor");
        return multiprocessors * Math.Max(1, blocks);
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
        Launch(function, gridX, gridY, 1, block, stream, parameters);

    /// <summary>Launches a kernel on a three-dimensional grid.</summary>
    public static unsafe void Launch(IntPtr function, uint gridX, uint gridY, uint gridZ, uint block, IntPtr stream, void** parameters) =>
        Check(CuLaunchKernel(function, gridX, gridY, gridZ, block, 1, 1, 0, stream, parameters, null), "cuLaunchKernel");

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
