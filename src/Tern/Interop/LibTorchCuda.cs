using System.Runtime.InteropServices;

namespace Tern.Interop;

/// <summary>
/// libtorch's CUDA streams and graphs, which TorchSharp 0.107 does not expose, bound through the C++ symbols that
/// libc10_cuda.so and libtorch_cuda.so export (Itanium mangling; <c>this</c> is the first argument of a member).
/// <c>c10::cuda::CUDAStream</c> is a 16-byte trivially copyable value ({device type, device index, stream id}), passed and
/// returned in two registers. Every entry point is looked up at first use; when one is missing (another libtorch build) the
/// caller falls back to eager execution.
/// </summary>
internal static unsafe class LibTorchCuda
{
    /// <summary>An opaque <c>c10::cuda::CUDAStream</c> value.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct CudaStream
    {
        public long Low, High;
    }

    [StructLayout(LayoutKind.Sequential)]
    struct MempoolId
    {
        public ulong First, Second;
    }

    static readonly Lazy<Api?> Bound = new(Bind);

    sealed class Api
    {
        public delegate* unmanaged<byte, sbyte, CudaStream> GetStreamFromPool;
        public delegate* unmanaged<CudaStream, void> SetCurrentStream;
        public delegate* unmanaged<sbyte, CudaStream> GetDefaultStream;
        public delegate* unmanaged<sbyte, CudaStream> GetCurrentStream;
        public delegate* unmanaged<CudaStream*, IntPtr> RawStream;
        public delegate* unmanaged<IntPtr, byte, void> GraphConstruct;
        public delegate* unmanaged<IntPtr, MempoolId, int, void> GraphCaptureBegin;
        public delegate* unmanaged<IntPtr, void> GraphCaptureEnd;
        public delegate* unmanaged<IntPtr, void> GraphReplay;
        public delegate* unmanaged<IntPtr, void> GraphDestruct;
    }

    /// <summary>True when every entry point was found.</summary>
    public static bool IsAvailable => Bound.Value is not null;

    /// <summary>Why <see cref="IsAvailable"/> is false.</summary>
    public static string? MissingReason { get; private set; }

    static Api? Bind()
    {
        if (!NativeLibrary.TryLoad("libc10_cuda.so", out IntPtr c10) || !NativeLibrary.TryLoad("libtorch_cuda.so", out IntPtr torchCuda))
        {
            MissingReason = "libc10_cuda.so / libtorch_cuda.so not loadable";
            return null;
        }
        IntPtr Find(IntPtr lib, string symbol)
        {
            if (NativeLibrary.TryGetExport(lib, symbol, out IntPtr p)) return p;
            MissingReason ??= $"symbol {symbol} not exported";
            return IntPtr.Zero;
        }
        var api = new Api
        {
            GetStreamFromPool = (delegate* unmanaged<byte, sbyte, CudaStream>)Find(c10, "_ZN3c104cuda17getStreamFromPoolEba"),
            SetCurrentStream = (delegate* unmanaged<CudaStream, void>)Find(c10, "_ZN3c104cuda20setCurrentCUDAStreamENS0_10CUDAStreamE"),
            GetDefaultStream = (delegate* unmanaged<sbyte, CudaStream>)Find(c10, "_ZN3c104cuda20getDefaultCUDAStreamEa"),
            GetCurrentStream = (delegate* unmanaged<sbyte, CudaStream>)Find(c10, "_ZN3c104cuda20getCurrentCUDAStreamEa"),
            RawStream = (delegate* unmanaged<CudaStream*, IntPtr>)Find(c10, "_ZNK3c104cuda10CUDAStream6streamEv"),
            GraphConstruct = (delegate* unmanaged<IntPtr, byte, void>)Find(torchCuda, "_ZN2at4cuda9CUDAGraphC1Eb"),
            GraphCaptureBegin = (delegate* unmanaged<IntPtr, MempoolId, int, void>)Find(torchCuda, "_ZN2at4cuda9CUDAGraph13capture_beginESt4pairIyyE21cudaStreamCaptureMode"),
            GraphCaptureEnd = (delegate* unmanaged<IntPtr, void>)Find(torchCuda, "_ZN2at4cuda9CUDAGraph11capture_endEv"),
            GraphReplay = (delegate* unmanaged<IntPtr, void>)Find(torchCuda, "_ZN2at4cuda9CUDAGraph6replayEv"),
            GraphDestruct = (delegate* unmanaged<IntPtr, void>)Find(torchCuda, "_ZN2at4cuda9CUDAGraphD1Ev"),
        };
        return MissingReason is null ? api : null;
    }

    static Api Require() => Bound.Value ?? throw new InvalidOperationException("CUDA graphs unavailable: " + MissingReason);

    /// <summary>A stream from libtorch's pool (non-blocking with respect to the default stream).</summary>
    public static CudaStream StreamFromPool() => Require().GetStreamFromPool(0, 0);

    /// <summary>The default stream of GPU 0.</summary>
    public static CudaStream DefaultStream() => Require().GetDefaultStream(0);

    /// <summary>The <c>cudaStream_t</c> libtorch launches on from this thread (the capture stream while capturing).</summary>
    public static IntPtr CurrentRawStream() => Raw(CurrentStream());

    /// <summary><see cref="CurrentRawStream"/>, or the legacy default stream (0) when libtorch's stream symbols are not reachable
    /// (libtorch then launches there).</summary>
    public static IntPtr CurrentRawStreamOrDefault() => IsAvailable ? CurrentRawStream() : IntPtr.Zero;

    /// <summary>The stream libtorch launches on from this thread.</summary>
    public static CudaStream CurrentStream() => Require().GetCurrentStream(0);

    /// <summary>The <c>cudaStream_t</c> of <paramref name="stream"/>.</summary>
    public static IntPtr Raw(CudaStream stream) => Require().RawStream(&stream);

    /// <summary>Makes <paramref name="stream"/> the one libtorch launches on from this thread.</summary>
    public static void SetCurrentStream(CudaStream stream) => Require().SetCurrentStream(stream);

    /// <summary>An <c>at::cuda::CUDAGraph</c> in native memory.</summary>
    public sealed class Graph : IDisposable
    {
        // Generous room for the C++ object, whose size is not exported.
        const int ObjectBytes = 64 * 1024;
        IntPtr self;
        bool captured;

        public Graph()
        {
            self = (IntPtr)NativeMemory.AllocZeroed(ObjectBytes);
            Require().GraphConstruct(self, 0);
        }

        /// <summary>Starts capturing the current stream into a private memory pool (thread-local capture mode).</summary>
        public void CaptureBegin() => Require().GraphCaptureBegin(self, default, 1);

        /// <summary>Ends the capture and instantiates the graph.</summary>
        public void CaptureEnd()
        {
            Require().GraphCaptureEnd(self);
            captured = true;
        }

        /// <summary>Launches the captured work on the current stream.</summary>
        public void Replay()
        {
            if (!captured) throw new InvalidOperationException("the graph has not been captured.");
            Require().GraphReplay(self);
        }

        public void Dispose()
        {
            if (self == IntPtr.Zero) return;
            Require().GraphDestruct(self);
            NativeMemory.Free((void*)self);
            self = IntPtr.Zero;
        }
    }
}
