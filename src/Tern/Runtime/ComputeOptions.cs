using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Runtime;

/// <summary>Which device Tern computes on.</summary>
public enum DeviceKind
{
    /// <summary>CUDA when a CUDA libtorch is loadable, else CPU.</summary>
    Auto,
    /// <summary>The CPU, through the libtorch-cpu package.</summary>
    Cpu,
    /// <summary>The first CUDA GPU, through a CUDA libtorch on the library path.</summary>
    Cuda,
}

/// <summary>Floating-point type of weights and activations.</summary>
public enum ModelDType
{
    /// <summary>32-bit IEEE float.</summary>
    Float32,
    /// <summary>bfloat16 (8-bit exponent, 7-bit mantissa).</summary>
    BFloat16,
    /// <summary>IEEE half precision.</summary>
    Float16,
}

/// <summary>Resolves device and dtype choices into TorchSharp values, and loads CUDA when asked.</summary>
public static class ComputeOptions
{
    static readonly object CudaLock = new();
    static bool? cudaAvailable;

    /// <summary>The TorchSharp scalar type of a <see cref="ModelDType"/>.</summary>
    public static ScalarType ToScalarType(this ModelDType dtype) => dtype switch
    {
        ModelDType.Float32 => ScalarType.Float32,
        ModelDType.BFloat16 => ScalarType.BFloat16,
        ModelDType.Float16 => ScalarType.Float16,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    /// <summary>Bytes per element of a <see cref="ModelDType"/>.</summary>
    public static int ElementSize(this ModelDType dtype) => dtype == ModelDType.Float32 ? 4 : 2;

    /// <summary>Parses "fp32|bf16|fp16" (also "float32", "bfloat16", "float16", "half").</summary>
    public static ModelDType ParseDType(string text) => text.Trim().ToLowerInvariant() switch
    {
        "fp32" or "float32" or "f32" or "float" => ModelDType.Float32,
        "bf16" or "bfloat16" => ModelDType.BFloat16,
        "fp16" or "float16" or "f16" or "half" => ModelDType.Float16,
        _ => throw new ArgumentException($"unknown dtype '{text}': use fp32, bf16 or fp16"),
    };

    /// <summary>Short name of a dtype as the CLI spells it.</summary>
    public static string ShortName(this ModelDType dtype) => dtype switch
    {
        ModelDType.Float32 => "fp32",
        ModelDType.BFloat16 => "bf16",
        _ => "fp16",
    };

    /// <summary>Parses "cpu|cuda|auto" (also "gpu", "cuda:0").</summary>
    public static DeviceKind ParseDevice(string text) => text.Trim().ToLowerInvariant() switch
    {
        "auto" => DeviceKind.Auto,
        "cpu" => DeviceKind.Cpu,
        "cuda" or "gpu" or "cuda:0" => DeviceKind.Cuda,
        _ => throw new ArgumentException($"unknown device '{text}': use cpu, cuda or auto"),
    };

    /// <summary>True when a CUDA libtorch could be loaded and sees a GPU. Loads it on first call.</summary>
    public static bool IsCudaAvailable()
    {
        lock (CudaLock)
        {
            if (cudaAvailable is bool known) return known;
            try
            {
                torch.InitializeDeviceType(DeviceType.CUDA);
                cudaAvailable = torch.cuda.is_available();
            }
            catch (Exception)
            {
                cudaAvailable = false;
            }
            if (cudaAvailable == true) Interop.LibTorchSettings.DisableCudnnAttention();
            return cudaAvailable.Value;
        }
    }

    /// <summary>The TorchSharp device for a choice; CUDA without a CUDA libtorch is an error that says how to get one.</summary>
    public static Device ResolveDevice(DeviceKind kind)
    {
        switch (kind)
        {
            case DeviceKind.Cpu:
                return torch.CPU;
            case DeviceKind.Cuda:
                if (!IsCudaAvailable())
                    throw new InvalidOperationException(
                        "CUDA was asked for, but no CUDA libtorch could be loaded or no GPU is visible. Put the torch/lib folder of a CUDA " +
                        "PyTorch install on LD_LIBRARY_PATH (for example `export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;" +
                        "print(os.path.dirname(torch.__file__))')/lib:$LD_LIBRARY_PATH`), or reference a TorchSharp CUDA package; " +
                        "or run on the CPU.");
                return torch.CUDA;
            default:
                return IsCudaAvailable() ? torch.CUDA : torch.CPU;
        }
    }
}
