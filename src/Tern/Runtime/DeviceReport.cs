using System.Diagnostics;
using Tern.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Runtime;

/// <summary>Facts about the device a benchmark runs on: its name, memory in use, and copy bandwidth.</summary>
public static class DeviceReport
{
    /// <summary>"NVIDIA H100 80GB HBM3", or the CPU model and core count.</summary>
    public static string Name(Device device)
    {
        if (device.type == DeviceType.CUDA) return CudaDriver.DeviceName() ?? "CUDA GPU";
        string model = File.Exists("/proc/cpuinfo")
            ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name"))?.Split(':', 2)[1].Trim() ?? "CPU"
            : "CPU";
        return $"{model} ({Environment.ProcessorCount} cores)";
    }

    /// <summary>Bytes in use: on CUDA the device's used memory (all processes, allocator caches included), on the CPU the
    /// process's peak resident set (VmHWM).</summary>
    public static long UsedBytes(Device device)
    {
        if (device.type == DeviceType.CUDA)
            return CudaDriver.MemoryInfo() is var (free, total) ? total - free : -1;
        if (!File.Exists("/proc/self/status")) return -1;
        string? line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("VmHWM:"));
        return line is null ? -1 : long.Parse(line.Split(':')[1].Trim().Split(' ')[0]) * 1024;
    }

    /// <summary>Free bytes of a CUDA device, or of host memory for the CPU (what the OS reports available).</summary>
    public static long FreeBytes(Device device) => device.type == DeviceType.CUDA
        ? CudaDriver.MemoryInfo()?.Free ?? 0
        : GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;

    /// <summary>Device-to-device copy bandwidth in bytes/s, counting bytes read and written (as the HF baseline script does).</summary>
    public static double CopyBandwidth(Device device, long bytes = 1L << 30, int repeats = 10)
    {
        using var scope = torch.NewDisposeScope();
        var a = torch.empty(bytes, ScalarType.Byte, device);
        var b = torch.empty(bytes, ScalarType.Byte, device);
        for (int i = 0; i < 3; i++) b.copy_(a);
        Synchronize(device);
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < repeats; i++) b.copy_(a);
        Synchronize(device);
        return 2.0 * bytes * repeats / watch.Elapsed.TotalSeconds;
    }

    /// <summary>Waits for queued GPU work.</summary>
    public static void Synchronize(Device device)
    {
        if (device.type == DeviceType.CUDA) torch.cuda.synchronize();
    }
}
