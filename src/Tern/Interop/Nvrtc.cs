using System.Runtime.InteropServices;
using System.Text;

namespace Tern.Interop;

/// <summary>NVRTC, CUDA's run-time compiler, found next to the CUDA toolkit or a PyTorch install; compiles kernel source to CUBIN.</summary>
internal static unsafe class Nvrtc
{
    sealed class Api
    {
        public delegate* unmanaged<IntPtr*, byte*, byte*, int, byte**, byte**, int> Create;
        public delegate* unmanaged<IntPtr, int, byte**, int> Compile;
        public delegate* unmanaged<IntPtr, nuint*, int> LogSize;
        public delegate* unmanaged<IntPtr, byte*, int> Log;
        public delegate* unmanaged<IntPtr, nuint*, int> CubinSize;
        public delegate* unmanaged<IntPtr, byte*, int> Cubin;
        public delegate* unmanaged<IntPtr*, int> Destroy;
    }

    static readonly Lazy<Api?> Bound = new(Bind);

    /// <summary>Why NVRTC could not be used, when it could not.</summary>
    public static string? MissingReason { get; private set; }

    static IEnumerable<string> Candidates()
    {
        foreach (string name in new[] { "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so" }) yield return name;
        var dirs = new List<string> { "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib" };
        if (Environment.GetEnvironmentVariable("TORCH_LIB_DIR") is { } torchLib)
        {
            dirs.Add(torchLib);
            string nvidia = Path.GetFullPath(Path.Combine(torchLib, "..", "..", "nvidia"));
            if (Directory.Exists(nvidia)) dirs.AddRange(Directory.GetDirectories(nvidia).Select(d => Path.Combine(d, "lib")));
        }
        dirs.AddRange(Directory.Exists("/usr/local") ? Directory.GetDirectories("/usr/local", "cuda-*").Select(d => Path.Combine(d, "targets/x86_64-linux/lib")) : []);
        foreach (string dir in dirs.Where(Directory.Exists))
            foreach (string file in Directory.GetFiles(dir, "libnvrtc*.so*").Where(f => !f.Contains("builtins")).OrderByDescending(f => f))
                yield return file;
    }

    static Api? Bind()
    {
        foreach (string candidate in Candidates())
        {
            if (!NativeLibrary.TryLoad(candidate, out IntPtr lib)) continue;
            IntPtr F(string name) => NativeLibrary.TryGetExport(lib, name, out IntPtr p) ? p : IntPtr.Zero;
            var api = new Api
            {
                Create = (delegate* unmanaged<IntPtr*, byte*, byte*, int, byte**, byte**, int>)F("nvrtcCreateProgram"),
                Compile = (delegate* unmanaged<IntPtr, int, byte**, int>)F("nvrtcCompileProgram"),
                LogSize = (delegate* unmanaged<IntPtr, nuint*, int>)F("nvrtcGetProgramLogSize"),
                Log = (delegate* unmanaged<IntPtr, byte*, int>)F("nvrtcGetProgramLog"),
                CubinSize = (delegate* unmanaged<IntPtr, nuint*, int>)F("nvrtcGetCUBINSize"),
                Cubin = (delegate* unmanaged<IntPtr, byte*, int>)F("nvrtcGetCUBIN"),
                Destroy = (delegate* unmanaged<IntPtr*, int>)F("nvrtcDestroyProgram"),
            };
            if (api.Create != null && api.Compile != null && api.Cubin != null && api.Destroy != null) return api;
        }
        MissingReason = "libnvrtc was not found (looked on the library path, in /usr/local/cuda*, and next to TORCH_LIB_DIR)";
        return null;
    }

    /// <summary>True when NVRTC could be loaded.</summary>
    public static bool IsAvailable => Bound.Value is not null;

    /// <summary>Compiles CUDA C++ to a CUBIN for the given architecture (e.g. "sm_90").</summary>
    public static byte[] CompileToCubin(string source, string name, string architecture)
    {
        var api = Bound.Value ?? throw new InvalidOperationException(MissingReason);
        IntPtr program;
        byte[] src = Encoding.UTF8.GetBytes(source + "\0"), file = Encoding.UTF8.GetBytes(name + "\0");
        fixed (byte* s = src, f = file)
            Check(api.Create(&program, s, f, 0, null, null), "nvrtcCreateProgram");
        try
        {
            string[] options = { "--gpu-architecture=" + architecture, "--std=c++17", "-default-device" };
            var handles = options.Select(o => GCHandle.Alloc(Encoding.UTF8.GetBytes(o + "\0"), GCHandleType.Pinned)).ToArray();
            try
            {
                byte** opts = stackalloc byte*[options.Length];
                for (int i = 0; i < options.Length; i++) opts[i] = (byte*)handles[i].AddrOfPinnedObject();
                int result = api.Compile(program, options.Length, opts);
                if (result != 0) throw new InvalidOperationException($"NVRTC could not compile {name} for {architecture}: {ReadLog(api, program)}");
            }
            finally
            {
                foreach (var h in handles) h.Free();
            }
            nuint size;
            Check(api.CubinSize(program, &size), "nvrtcGetCUBINSize");
            var cubin = new byte[(int)size];
            fixed (byte* c = cubin) Check(api.Cubin(program, c), "nvrtcGetCUBIN");
            return cubin;
        }
        finally
        {
            api.Destroy(&program);
        }
    }

    static string ReadLog(Api api, IntPtr program)
    {
        nuint size;
        if (api.LogSize(program, &size) != 0 || size == 0) return "(no log)";
        var log = new byte[(int)size];
        fixed (byte* l = log) api.Log(program, l);
        return Encoding.UTF8.GetString(log).TrimEnd('\0');
    }

    static void Check(int result, string call)
    {
        if (result != 0) throw new InvalidOperationException($"{call} failed with NVRTC error {result}.");
    }
}
