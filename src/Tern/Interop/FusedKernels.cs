using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Interop;

/// <summary>
/// The fused kernels of <c>Kernels/fused.cu</c>, DejaVu's sparse products of <c>Kernels/sparse.cu</c> and LaughingHyena's
/// modal step of <c>Kernels/modal.cu</c> (one program; DejaVu's selection in <c>Kernels/select.cu</c>, a program of its own):
/// compiled with NVRTC for the GPU at hand on first use and launched on libtorch's current stream, so they order with
/// libtorch's own work and are captured into CUDA graphs. On the CPU some run as <see cref="CpuKernels"/>.
/// Each Try method returns false (and the caller keeps its composite path) for unsupported devices and layouts, when NVRTC
/// is missing, when TERN_FUSED_KERNELS=0, or inside <see cref="Suspend"/>.
/// </summary>
internal static unsafe partial class FusedKernels
{
    sealed record Loaded(IntPtr[] RmsNorm, IntPtr[] LayerNorm, IntPtr[] Rotary, IntPtr[] Gated, IntPtr[] Gemv, IntPtr[] CacheAppend, IntPtr[] AttnSplit, IntPtr[] AttnCombine,
        IntPtr[] GatherRows, IntPtr[] GatherColumns, IntPtr[] ColumnsFinish, IntPtr[] GatherColumnRuns, IntPtr[] RotaryInto, IntPtr[] RotarySlots, IntPtr ModalStep, IntPtr ShiftSlots);

    static readonly Lazy<Loaded?> Kernels = new(Load);

    static readonly bool Disabled = Environment.GetEnvironmentVariable("TERN_FUSED_KERNELS") == "0";
    static int suspended;

    /// <summary>Turns every fused kernel off, on both devices, until the result is disposed: what tests compare the kernels
    /// with.</summary>
    public static IDisposable Suspend()
    {
        Interlocked.Increment(ref suspended);
        return new Resumption();
    }

    sealed class Resumption : IDisposable
    {
        int disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref disposed, 1) == 0) Interlocked.Decrement(ref suspended);
        }
    }

    static bool Off => Disabled || Volatile.Read(ref suspended) > 0;

    // The CPU's kernels serve tensors in host memory.
    static bool OnCpu(Tensor t) => t.device_type == DeviceType.CPU && !Off;

    /// <summary>Why the kernels are not in use, when they are not.</summary>
    public static string? UnavailableReason { get; private set; }

    static Loaded? Load()
    {
        if (Disabled)
        {
            UnavailableReason = "disabled by TERN_FUSED_KERNELS=0";
            return null;
        }
        try
        {
            if (!LibTorchCuda.IsAvailable) throw new InvalidOperationException(LibTorchCuda.MissingReason);
            string source = Source("fused.cu") + "\n" + Source("sparse.cu") + "\n" + Source("modal.cu"); // sparse.cu uses fused.cu's helpers
            byte[] cubin = Compile(source, "fused.cu");
            string[] suffixes = { "f32", "bf16", "f16" };
            string[] perType = { "rms_norm_", "layer_norm_", "rotary_", "gated_", "cache_append_", "attn_split_", "attn_combine_", "gather_rows_", "gather_columns_",
                "columns_finish_", "gather_column_runs_", "rotary_into_", "rotary_slots_" };
            var all = CudaDriver.LoadKernels(cubin, perType.SelectMany(k => suffixes.Select(s => k + s)).Concat(new[] { "gemv_bf16", "gemv_f16", "modal_step", "shift_slots" }));
            IntPtr[] Of(int kernel) => all.Skip(kernel * 3).Take(3).ToArray();
            int gemv = perType.Length * 3;
            return new Loaded(Of(0), Of(1), Of(2), Of(3), new[] { IntPtr.Zero, all[gemv], all[gemv + 1] }, Of(4), Of(5), Of(6), Of(7), Of(8), Of(9), Of(10),
                Of(11), Of(12), all[gemv + 2], all[gemv + 3]);
        }
        catch (Exception e) when (e is InvalidOperationException or DllNotFoundException or EntryPointNotFoundException)
        {
            UnavailableReason = e.Message;
            return null;
        }
    }

    // A program compiled for the GPU at hand.
    static byte[] Compile(string source, string name)
    {
        var (major, minor) = CudaDriver.ComputeCapability();
        return Nvrtc.CompileToCubin(source, name, $"sm_{major}{minor}");
    }

    static string Source(string file)
    {
        using var stream = typeof(FusedKernels).Assembly.GetManifestResourceStream("Tern.Kernels." + file)
            ?? throw new InvalidOperationException($"embedded kernel source {file} missing");
        return new StreamReader(stream).ReadToEnd();
    }

    static readonly Lazy<IntPtr> SelectKernel = new(() =>
    {
        if (!Available) return IntPtr.Zero;
        try
        {
            return CudaDriver.LoadKernels(Compile(Source("select.cu"), "select.cu"), new[] { "select_top_k16" })[0];
        }
        catch (Exception e) when (e is InvalidOperationException or DllNotFoundException or EntryPointNotFoundException)
        {
            SelectUnavailableReason = e.Message;
            return IntPtr.Zero;
        }
    });

    /// <summary>Why <see cref="TryTopKAscending"/>'s kernel is not in use while the others are, when it is not.</summary>
    public static string? SelectUnavailableReason { get; private set; }

    /// <summary>Most units a row <see cref="TryTopKAscending"/> takes: 32 a thread of a 1024-thread block (select.cu).</summary>
    public const int LargestSelection = 32 * 1024;

    /// <summary>
    /// DejaVu's selection: the indices of the <paramref name="k"/> largest of each row of 16-bit <paramref name="scores"/>
    /// [.., units] (at most <see cref="LargestSelection"/>), int64 [.., k] ascending (what the gather kernels read in order), in one
    /// launch where topk + sort took several. Of scores equal to the k-th largest, the lowest indices are kept. CUDA only;
    /// 1 ≤ k ≤ units; false otherwise (fp32 too).
    /// </summary>
    public static bool TryTopKAscending(Tensor scores, int k, out Tensor indices)
    {
        indices = null!;
        long units = scores.size(-1);
        if (!Usable(scores) || scores.ElementSize != 2 || k < 1 || k > units || units > LargestSelection) return false;
        long rows = scores.NumberOfElements / units;
        if (rows < 1 || rows > int.MaxValue || SelectKernel.Value == IntPtr.Zero) return false;
        indices = torch.empty(TensorMemory.ShapeWithLast(scores, k), ScalarType.Int64, scores.device);
        IntPtr po = Ptr(indices), ps = Ptr(scores);
        int n = (int)units;
        void** args = stackalloc void*[] { &po, &ps, &n, &k };
        CudaDriver.Launch(SelectKernel.Value, (uint)rows, 1024, LibTorchCuda.CurrentRawStream(), args);
        return true;
    }

    /// <summary>True when the kernels compiled and loaded (compiles them on first call; CUDA only).</summary>
    public static bool Available => Kernels.Value is not null;

    static int TypeIndex(ScalarType t) => t switch
    {
        ScalarType.Float32 => 0,
        ScalarType.BFloat16 => 1,
        ScalarType.Float16 => 2,
        _ => -1,
    };

    // Not while autograd records: the kernels write raw memory behind libtorch's back, so no backward exists for them and a
    // training forward (grad enabled) would get wrong or missing gradients. Inference runs under no_grad and keeps them.
    static bool Usable(Tensor t) => UsableLaidOut(t) && t.is_contiguous();

    static bool UsableLaidOut(Tensor t) => t.device_type == DeviceType.CUDA && TypeIndex(t.dtype) >= 0 && !torch.is_grad_enabled() && !Off && Available;

    /// <summary>Slots from one head's first to the next's in a [B, H, L] or [B, H, L, D] cache tensor that is the first L slots
    /// of a contiguous [B, H, S, …] one (S ≥ L, entries contiguous), or -1 for any other layout.</summary>
    static long HeadStride(Tensor t)
    {
        long entry = t.dim() == 4 ? t.size(3) : 1;
        if (t.dim() is not (3 or 4) || t.dim() == 4 && t.stride(3) != 1 || t.stride(2) != entry || t.stride(1) % entry != 0) return -1;
        long stride = t.stride(1) / entry;
        return stride >= t.size(2) && t.stride(0) == t.size(1) * t.stride(1) ? stride : -1;
    }

    static IntPtr Ptr(Tensor t) => TensorMemory.Pointer(t);

    /// <summary>RMSNorm over the last dimension of a contiguous tensor; see fused.cu for the exact rounding.</summary>
    public static bool TryRmsNorm(Tensor x, Tensor weight, double eps, out Tensor y)
    {
        y = null!;
        if (OnCpu(x)) return CpuKernels.TryRmsNorm(x, weight, eps, out y);
        if (!Usable(x) || !weight.is_contiguous() || weight.dtype != x.dtype) return false;
        int cols = (int)x.size(-1);
        if (cols > LargestNormRow) return false;
        y = torch.empty_like(x);
        IntPtr py = Ptr(y), px = Ptr(x), pw = Ptr(weight);
        float e = (float)eps;
        void** args = stackalloc void*[] { &py, &px, &pw, &cols, &e };
        LaunchRowNorm(Kernels.Value!.RmsNorm[TypeIndex(x.dtype)], x, args);
        return true;
    }

    /// <summary>Longest row the norm kernels take: they hold at most 8 elements per thread of a 1024-thread block.</summary>
    const int LargestNormRow = 8 * 1024;

    /// <summary>A norm kernel of fused.cu over every row of <paramref name="x"/>: one block per row, a thread per 8 elements.</summary>
    static void LaunchRowNorm(IntPtr kernel, Tensor x, void** args)
    {
        int cols = (int)x.size(-1);
        CudaDriver.Launch(kernel, (uint)(x.NumberOfElements / cols), (uint)Math.Max(32, ((cols + 7) / 8 + 31) / 32 * 32), LibTorchCuda.CurrentRawStream(), args);
    }

    /// <summary>LayerNorm over the last dimension of contiguous <paramref name="x"/> with <paramref name="weight"/> and optional
    /// <paramref name="bias"/> (torch's layer_norm: fp32 statistics, one rounding); CUDA only, rows of at most <see cref="LargestNormRow"/>.</summary>
    public static bool TryLayerNorm(Tensor x, Tensor weight, Tensor? bias, double eps, out Tensor y)
    {
        y = null!;
        int cols = (int)x.size(-1);
        if (!Usable(x) || !weight.is_contiguous() || weight.dtype != x.dtype || weight.NumberOfElements != cols) return false;
        if (bias is not null && (!bias.is_contiguous() || bias.dtype != x.dtype || bias.NumberOfElements != cols)) return false;
        if (cols > LargestNormRow) return false;
        y = torch.empty_like(x);
        IntPtr py = Ptr(y), px = Ptr(x), pw = Ptr(weight), pb = bias is null ? IntPtr.Zero : Ptr(bias);
        float e = (float)eps;
        void** args = stackalloc void*[] { &py, &px, &pw, &pb, &cols, &e };
        LaunchRowNorm(Kernels.Value!.LayerNorm[TypeIndex(x.dtype)], x, args);
        return true;
    }

    /// <summary>Rotary embedding in place on the first <paramref name="heads"/> heads of a contiguous [rows, allHeads, headDim]
    /// buffer, with positions int64 [rows] and cos / signed-sin tables [positions, rotaryDim].</summary>
    public static bool TryRotaryInPlace(Tensor qkv, int heads, int headDim, int rotaryDim, Tensor positions, Tensor cos, Tensor sin)
    {
        if (OnCpu(qkv)) return CpuKernels.TryRotaryInPlace(qkv, heads, headDim, rotaryDim, positions, cos, sin);
        return Usable(qkv) && TryRotaryRows(qkv, qkv.NumberOfElements / positions.NumberOfElements, heads, headDim, rotaryDim, positions, cos, sin);
    }

    /// <summary>Rotary embedding in place on CUDA over x [B, T, heads, headDim], a view whose heads are adjacent rows of
    /// headDim elements and whose tokens are evenly strided (the keys of a fused qkv buffer); false on the CPU and for other
    /// layouts.</summary>
    public static bool TryRotaryViewInPlace(Tensor x, int headDim, int rotaryDim, Tensor positions, Tensor cos, Tensor sin) =>
        UsableLaidOut(x) && x.dim() == 4 && x.stride(3) == 1 && x.stride(2) == headDim && x.size(3) == headDim
        && x.stride(0) == x.size(1) * x.stride(1) && positions.NumberOfElements == x.size(0) * x.size(1)
        && TryRotaryRows(x, x.stride(1), (int)x.size(2), headDim, rotaryDim, positions, cos, sin);

    /// <summary>StreamingLLM's decode step at <paramref name="positions"/> [B, 1], in one kernel: the queries q [B, 1, heads,
    /// headDim] rotated in place, and the new keys x [B, 1, kvHeads, headDim] rotated into <paramref name="attended"/> [B, kvHeads,
    /// Cap, headDim] (contiguous) at the slot held in <paramref name="slot"/> (int64 [1], every row's), x unchanged. q and x are
    /// views of a fused qkv buffer (heads adjacent, rows evenly strided). False on the CPU and for other layouts.</summary>
    public static bool TryRotaryInto(Tensor attended, Tensor q, Tensor x, int rotaryDim, Tensor positions, Tensor cos, Tensor sin, Tensor slot)
    {
        int heads = (int)q.size(2), kvHeads = (int)x.size(2), headDim = (int)x.size(3);
        static bool RowsOfHeads(Tensor t, Tensor like) => UsableLaidOut(t) && t.dim() == 4 && t.size(0) == like.size(0) && t.size(1) == 1
            && t.size(3) == like.size(3) && t.stride(3) == 1 && t.stride(2) == like.size(3) && t.dtype == like.dtype;
        if (!RowsOfHeads(q, x) || !RowsOfHeads(x, x) || !Usable(attended) || attended.dtype != x.dtype || attended.dim() != 4
            || attended.size(0) != x.size(0) || attended.size(1) != kvHeads || attended.size(3) != headDim || !positions.is_contiguous()
            || positions.dtype != ScalarType.Int64 || positions.NumberOfElements != x.size(0) || cos.dtype != x.dtype
            || slot.dtype != ScalarType.Int64 || slot.NumberOfElements != 1 || slot.device_type != DeviceType.CUDA) return false;
        long qRow = q.stride(0), xRow = x.stride(0);
        int cap = (int)attended.size(2);
        IntPtr pa = Ptr(attended), pq = Ptr(q), px = Ptr(x), pp = Ptr(positions), pc = Ptr(cos), ps = Ptr(sin), pslot = Ptr(slot);
        void** args = stackalloc void*[] { &pa, &pq, &qRow, &heads, &px, &xRow, &kvHeads, &headDim, &rotaryDim, &pp, &pc, &ps, &pslot, &cap };
        CudaDriver.Launch(Kernels.Value!.RotaryInto[TypeIndex(x.dtype)], (uint)(x.size(0) * (heads + kvHeads)), RotaryThreads(headDim),
            LibTorchCuda.CurrentRawStream(), args);
        return true;
    }

    /// <summary>Keys of slots [<paramref name="start"/>, start + <paramref name="count"/>) stored unrotated in
    /// <paramref name="keys"/> [B, H, Cap, headDim] rotated at their own slot index into <paramref name="attended"/> (the same
    /// shape; both contiguous) — one CUDA kernel (StreamingLLM's moved block after a shift); false on the CPU and for other
    /// layouts, nothing changed.</summary>
    public static bool TryRotarySlots(Tensor attended, Tensor keys, int start, int count, int rotaryDim, Tensor cos, Tensor sin)
    {
        if (!Usable(keys) || !Usable(attended) || keys.dim() != 4 || attended.dim() != 4 || attended.dtype != keys.dtype
            || Enumerable.Range(0, 4).Any(d => attended.size(d) != keys.size(d)) // not `shape`: a native callback per call
            || cos.dtype != keys.dtype || start < 0 || count <= 0 || start + count > keys.size(2) || cos.size(0) < start + count) return false;
        int cap = (int)keys.size(2), headDim = (int)keys.size(3);
        long blocks = keys.size(0) * keys.size(1) * count;
        if (blocks > int.MaxValue) return false;
        IntPtr pa = Ptr(attended), pk = Ptr(keys), pc = Ptr(cos), ps = Ptr(sin);
        void** args = stackalloc void*[] { &pa, &pk, &cap, &headDim, &rotaryDim, &start, &count, &pc, &ps };
        CudaDriver.Launch(Kernels.Value!.RotarySlots[TypeIndex(keys.dtype)], (uint)blocks, RotaryThreads(headDim), LibTorchCuda.CurrentRawStream(), args);
        return true;
    }

    /// <summary>Moves slots [<paramref name="from"/>, from + <paramref name="count"/>) of every (row, head) of a contiguous CUDA
    /// tensor [rows, heads, cap, width] down to [<paramref name="to"/>, to + count), in place (the ranges may overlap), in one
    /// kernel: StreamingLLM's shift, where a copy through a temporary read and wrote the block twice. False on the CPU, for other
    /// layouts (a slot not a whole number of 16-byte vectors), when not moving down, and for a short move of a long block (more
    /// than <see cref="LongestShiftWalk"/> slots a thread); nothing changed then.</summary>
    public static bool TryShiftSlots(Tensor storage, int from, int to, int count)
    {
        if (!Usable(storage) || storage.dim() != 4 || to < 0 || to >= from || count <= 0 || from + count > storage.size(2)) return false;
        if ((count + (from - to) - 1) / (from - to) > LongestShiftWalk) return false;
        long slotBytes = storage.size(3) * storage.ElementSize, rowHeads = storage.size(0) * storage.size(1);
        if (slotBytes % 16 != 0 || rowHeads > 65535) return false;
        int vecs = (int)(slotBytes / 16), cap = (int)storage.size(2);
        long lanes = (long)Math.Min(from - to, count) * vecs;
        IntPtr pd = Ptr(storage);
        void** args = stackalloc void*[] { &pd, &vecs, &cap, &from, &to, &count };
        CudaDriver.Launch(Kernels.Value!.ShiftSlots, (uint)((lanes + 255) / 256), (uint)rowHeads, 256, LibTorchCuda.CurrentRawStream(), args);
        return true;
    }

    /// <summary>Most slots one thread of shift_slots walks (the block over the distance moved), eight loads in flight at a time:
    /// each batch of eight waits a memory round trip, so a long walk is bound by latency where the copy through a temporary runs
    /// at the bandwidth — one evicted token a step over a 4,096-slot window would be 512 round trips a thread. Evicting every 64
    /// (63 slots a thread) is the case measured (H100, twenty-fifth session).</summary>
    const int LongestShiftWalk = 128;

    /// <summary>The rotary kernel over rows of <paramref name="rowStride"/> elements, one per position, whose first
    /// <paramref name="heads"/> heads it rotates.</summary>
    static bool TryRotaryRows(Tensor x, long rowStride, int heads, int headDim, int rotaryDim, Tensor positions, Tensor cos, Tensor sin)
    {
        if (!positions.is_contiguous() || positions.dtype != ScalarType.Int64 || cos.dtype != x.dtype) return false;
        long rows = positions.NumberOfElements;
        IntPtr pq = Ptr(x), pp = Ptr(positions), pc = Ptr(cos), ps = Ptr(sin);
        void** args = stackalloc void*[] { &pq, &rowStride, &heads, &headDim, &rotaryDim, &pp, &pc, &ps };
        CudaDriver.Launch(Kernels.Value!.Rotary[TypeIndex(x.dtype)], (uint)(rows * heads), RotaryThreads(rotaryDim), LibTorchCuda.CurrentRawStream(), args);
        return true;
    }

    /// <summary>Threads of a rotary kernel's block (one head): one per rotated pair of <paramref name="dims"/>, whole warps, at most 256.</summary>
    static uint RotaryThreads(int dims) => (uint)Math.Min(256, (dims / 2 + 31) / 32 * 32);

    /// <summary>
    /// y = x·Wᵀ (+ bias) (+ residual) for a single row x (decode at batch 1), 16-bit types only: cuBLAS reads W well below the
    /// memory bandwidth at one row. Returns false for more rows, fp32, or shapes the kernel does not take (K % 8 ≠ 0). On the
    /// CPU: <see cref="CpuKernels.TryLinear"/>.
    /// </summary>
    public static bool TryGemv(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, out Tensor y)
    {
        y = null!;
        if (OnCpu(x)) return CpuKernels.TryLinear(x, weight, bias, residual, out y);
        int k = (int)weight.size(1), n = (int)weight.size(0);
        if (x.dtype == ScalarType.Float32 || x.size(-1) != k || x.NumberOfElements != k || k % 8 != 0) return false;
        if (!Usable(x) || !weight.is_contiguous() || weight.dtype != x.dtype) return false;
        if (bias is not null && (!bias.is_contiguous() || bias.dtype != x.dtype)) return false;
        if (residual is not null && (!residual.is_contiguous() || residual.dtype != x.dtype || residual.NumberOfElements != n)) return false;
        y = torch.empty(TensorMemory.ShapeWithLast(x, n), x.dtype, x.device);
        IntPtr py = Ptr(y), pw = Ptr(weight), px = Ptr(x), pb = bias is null ? IntPtr.Zero : Ptr(bias), pr = residual is null ? IntPtr.Zero : Ptr(residual);
        void** args = stackalloc void*[] { &py, &pw, &px, &pb, &pr, &n, &k };
        const int warpsPerBlock = 8;
        CudaDriver.Launch(Kernels.Value!.Gemv[TypeIndex(x.dtype)], (uint)((n + warpsPerBlock - 1) / warpsPerBlock), 32 * warpsPerBlock,
            LibTorchCuda.CurrentRawStream(), args);
        return true;
    }

    /// <summary>Appends one token per sequence (k, v views [B, Hkv, 1, D] with a contiguous last dimension, positions [B, 1])
    /// to a layer's cache tensors at the slot held in <paramref name="slot"/>: int64 [1] for every row, or [B] (contiguous),
    /// each row's own.</summary>
    public static bool TryCacheAppend(Tensor keys, Tensor values, Tensor cachePositions, Tensor k, Tensor v, Tensor positions, Tensor slot)
    {
        if (!Usable(keys) || k.size(2) != 1 || k.stride(-1) != 1 || v.stride(-1) != 1 || k.dtype != keys.dtype || v.dtype != keys.dtype
            || !positions.is_contiguous() || positions.NumberOfElements != k.size(0)) return false;
        int slotStride = slot.NumberOfElements == 1 ? 0 : 1;
        if (slotStride == 1 && (slot.NumberOfElements != k.size(0) || !slot.is_contiguous())) return false;
        int kvHeads = (int)keys.size(1), cap = (int)keys.size(2), headDim = (int)keys.size(3);
        long kb = k.stride(0), kh = k.stride(1), vb = v.stride(0), vh = v.stride(1);
        IntPtr pk = Ptr(keys), pv = Ptr(values), pc = Ptr(cachePositions), sk = Ptr(k), sv = Ptr(v), pp = Ptr(positions), ps = Ptr(slot);
        void** args = stackalloc void*[] { &pk, &pv, &pc, &sk, &sv, &kb, &kh, &vb, &vh, &pp, &ps, &slotStride, &kvHeads, &cap, &headDim };
        CudaDriver.Launch(Kernels.Value!.CacheAppend[TypeIndex(keys.dtype)], (uint)(k.size(0) * kvHeads), (uint)Math.Min(256, (headDim + 31) / 32 * 32),
            LibTorchCuda.CurrentRawStream(), args);
        return true;
    }

    /// <summary>
    /// Decode attention of one query per sequence (q view [B, H, 1, D], last dimension contiguous; query positions [B, 1])
    /// over a layer cache, masked by the cached positions; returns [B, 1, H·D]. Keys, values and positions [B, Hkv, L, …] may
    /// be the first L slots of the cache's (a narrowed view): only those are read. Two kernels (split, combine) replace the
    /// seven of the composite path. With <paramref name="keptHeads"/> (int64 [B, k], ascending; DejaVu's head subset) q holds
    /// those query heads only and so does the output, [B, 1, k·D]; query head h reads KV head h / <paramref name="groups"/>.
    /// </summary>
    public static bool TryDecodeAttention(Tensor q, Tensor keys, Tensor values, Tensor cachePositions, Tensor queryPositions,
        int window, double scale, out Tensor output, Tensor? keptHeads = null, int groups = 0)
    {
        output = null!;
        int heads = (int)q.size(1), kvHeads = (int)keys.size(1), slots = (int)keys.size(2), headDim = (int)keys.size(3);
        if (keptHeads is null) groups = heads / kvHeads;
        else if (keptHeads.dtype != ScalarType.Int64 || !keptHeads.is_contiguous() || keptHeads.NumberOfElements != q.size(0) * heads || groups < 1) return false;
        // Against the masked-matmul path (7B, prompt 512, H100): ahead at batch 16 (8.57 against 8.68 ms a step), behind at 64
        // (15.16 against 14.77).
        if (q.size(0) > LargestDecodeAttentionBatch) return false;
        int rowVecs = headDim * (int)keys.ElementSize / 16; // 16-byte pieces per row: a power of two from 4 to 32
        long headStride = HeadStride(keys);
        if (!UsableLaidOut(keys) || q.size(2) != 1 || q.stride(-1) != 1 || q.dtype != keys.dtype || headDim * keys.ElementSize % 16 != 0
            || rowVecs < 4 || rowVecs > 32 || (rowVecs & (rowVecs - 1)) != 0 || headStride < 0 || headStride > int.MaxValue
            || HeadStride(values) != headStride || values.dtype != keys.dtype || HeadStride(cachePositions) != headStride
            || !queryPositions.is_contiguous() || queryPositions.NumberOfElements != q.size(0)) return false;
        int stride = (int)headStride;
        const int maxSplits = 1024; // the combine's shared array in fused.cu
        long batch = q.size(0), qb = q.stride(0), qh = q.stride(1);
        // Chunks of 4 keys a thread group (128 / rowVecs groups; two tiles of fused.cu's), as many over the cache's capacity as
        // fill one wave of the grid (a 4k cache of 32 heads, six blocks an SM: 22 chunks of 192 keys a head). Sized by the capacity, not
        // the slots attended, so that a step over a prefix of the slots splits them as a static step over all of them does, and
        // gives the same bits.
        var kernels = Kernels.Value!;
        int t = TypeIndex(q.dtype);
        int tile = 128 / rowVecs * 4, tiles = (stride + tile - 1) / tile;
        IntPtr split = kernels.AttnSplit[t];
        int wanted = (int)Math.Clamp(Wave(split) / (batch * heads), 1, maxSplits);
        int chunk = (tiles + wanted - 1) / wanted * tile, splits = (slots + chunk - 1) / chunk;
        if (splits > maxSplits) return false;
        using var partOut = torch.empty(new long[] { batch * heads * splits * headDim }, ScalarType.Float32, q.device);
        using var partMax = torch.empty(new long[] { batch * heads * splits }, ScalarType.Float32, q.device);
        using var partSum = torch.empty(new long[] { batch * heads * splits }, ScalarType.Float32, q.device);
        output = torch.empty(new long[] { batch, 1, heads * headDim }, q.dtype, q.device);
        IntPtr po = Ptr(partOut), pm = Ptr(partMax), ps = Ptr(partSum), pq = Ptr(q), pk = Ptr(keys), pv = Ptr(values), pc = Ptr(cachePositions),
            pp = Ptr(queryPositions), py = Ptr(output), ph = keptHeads is null ? IntPtr.Zero : Ptr(keptHeads);
        float sc = (float)scale;
        IntPtr stream = LibTorchCuda.CurrentRawStream();
        void** splitArgs = stackalloc void*[] { &po, &pm, &ps, &pq, &qb, &qh, &pk, &pv, &pc, &pp, &ph, &heads, &groups, &kvHeads, &slots, &stride, &headDim, &window, &sc, &chunk };
        CudaDriver.Launch(split, (uint)(batch * heads), (uint)splits, 128, stream, splitArgs);
        void** combineArgs = stackalloc void*[] { &py, &po, &pm, &ps, &splits, &headDim };
        CudaDriver.Launch(kernels.AttnCombine[t], (uint)(batch * heads), 1, (uint)Math.Min(256, headDim), stream, combineArgs);
        return true;
    }

    const int LargestDecodeAttentionBatch = 16;

    static readonly System.Collections.Concurrent.ConcurrentDictionary<IntPtr, long> WaveSizes = new();

    // Blocks of 128 threads of a kernel resident on the whole GPU at once.
    static long Wave(IntPtr kernel) => WaveSizes.GetOrAdd(kernel, k => CudaDriver.ResidentBlocks(k, 128));

    /// <summary>Decode attention with every cached entry visible, on the CPU (<see cref="CpuKernels.TryDecodeAttention"/>: q
    /// [B, Hkv, G, D], rows of D contiguous, keys and values [B, Hkv, T, D] → [B, Hkv, G, D]); false on CUDA, whose steps take the masked
    /// kernel above.</summary>
    public static bool TryUnmaskedDecodeAttention(Tensor q, Tensor keys, Tensor values, out Tensor output)
    {
        output = null!;
        return OnCpu(q) && CpuKernels.TryDecodeAttention(q, keys, values, out output);
    }

    /// <summary>Causal attention over a first chunk (q, k, v [B, H, T, D]) in bf16 on a CPU without bf16 arithmetic: widened
    /// to fp32 (exactly), attended in fp32 and rounded once. libtorch's CPU flash kernel multiplies in bf16,
    /// which such CPUs emulate (the default model's 8 × 128-token bf16 prefill: 206 → 192 ms, alternating in one process; one
    /// 128-token row level). The fp32 copies of q, k and v live for the call (twice their bf16 bytes, one layer at a time).
    /// False elsewhere: fp32, CUDA, CPUs with AVX512_BF16, autograd.</summary>
    public static bool TryWidenedCausalAttention(Tensor q, Tensor k, Tensor v, out Tensor output)
    {
        output = null!;
        if (!OnCpu(q) || q.dtype != ScalarType.BFloat16 || !CpuKernels.EmulatesBf16 || torch.is_grad_enabled()) return false;
        using var scope = torch.NewDisposeScope();
        output = torch.nn.functional.scaled_dot_product_attention(q.to(ScalarType.Float32), k.to(ScalarType.Float32), v.to(ScalarType.Float32),
            is_casual: true).to(ScalarType.BFloat16).MoveToOuterDisposeScope();
        return true;
    }

    /// <summary>A decode step's one new entry a row written at <paramref name="slot"/> of a bf16 or fp32 cache (see
    /// <see cref="CpuKernels.TryCacheAppendAt"/>): on the CPU only (false elsewhere).</summary>
    public static bool TryCacheAppendAt(Tensor keys, Tensor values, Tensor cachePositions, Tensor k, Tensor v, Tensor positions, int slot) =>
        OnCpu(keys) && CpuKernels.TryCacheAppendAt(keys, values, cachePositions, k, v, positions, slot);

    /// <summary>Each row's arg-max of 2-D logits (int64), as <c>argmax(-1)</c>: on the CPU only (false elsewhere).</summary>
    public static bool TryArgMax(Tensor x, out Tensor indices)
    {
        indices = null!;
        return OnCpu(x) && CpuKernels.TryArgMax(x, out indices);
    }

    /// <summary>y = act(gate) · up for a contiguous [..., 2n] tensor holding [gate | up]; <paramref name="kind"/>:
    /// 0 silu, 1 relu, 2 gelu, 3 gelu (tanh).</summary>
    public static bool TryGated(Tensor gateUp, int n, int kind, out Tensor y)
    {
        y = null!;
        if (OnCpu(gateUp)) return CpuKernels.TryGated(gateUp, n, kind, out y);
        if (!Usable(gateUp)) return false;
        y = torch.empty(TensorMemory.ShapeWithLast(gateUp, n), gateUp.dtype, gateUp.device);
        long rows = gateUp.NumberOfElements / (2L * n);
        IntPtr py = Ptr(y), pg = Ptr(gateUp);
        void** args = stackalloc void*[] { &py, &pg, &rows, &n, &kind };
        long total = rows * n;
        CudaDriver.Launch(Kernels.Value!.Gated[TypeIndex(gateUp.dtype)], (uint)Math.Min(65535, (total + 255) / 256), 256,
            LibTorchCuda.CurrentRawStream(), args);
        return true;
    }

    /// <summary>
    /// One token of a modal recurrence (<see cref="Distillation.ModalRecurrence.Step"/>): <paramref name="state"/> [B, C, K…, S]
    /// complex64, updated in place for rows where <paramref name="live"/> [B] (bool) is true, and y [B, C, K…] = Re Σ_s R x' + D w
    /// from w [B, C, K…] fp32, poles and residues [C, S] complex64, direct [C] fp32. CUDA only; S must be a power of two ≤ 32.
    /// </summary>
    public static bool TryModalStep(Tensor state, Tensor w, Tensor? live, Tensor poles, Tensor residues, Tensor direct, out Tensor y)
    {
        y = null!;
        int modes = (int)state.size(-1);
        if (!Usable(w) || w.dtype != ScalarType.Float32 || state.dtype != ScalarType.ComplexFloat32 || !state.is_contiguous()
            || poles.dtype != ScalarType.ComplexFloat32 || !poles.is_contiguous() || !residues.is_contiguous() || !direct.is_contiguous()
            || direct.dtype != ScalarType.Float32 || modes > 32 || (modes & (modes - 1)) != 0
            || live is not null && (live.dtype != ScalarType.Bool || !live.is_contiguous())) return false;
        long items = w.NumberOfElements, k = items / (w.size(0) * w.size(1));
        int channels = (int)w.size(1);
        y = torch.empty_like(w);
        IntPtr ps = Ptr(state), py = Ptr(y), pw = Ptr(w), pl = live is null ? IntPtr.Zero : Ptr(live), pp = Ptr(poles), pr = Ptr(residues), pd = Ptr(direct);
        void** args = stackalloc void*[] { &ps, &py, &pw, &pl, &pp, &pr, &pd, &items, &channels, &k, &modes };
        CudaDriver.Launch(Kernels.Value!.ModalStep, (uint)((items * modes + 255) / 256), 256, LibTorchCuda.CurrentRawStream(), args);
        return true;
    }

    /// <summary>A weight [out, in] stored transposed (a view of a contiguous [in, out] tensor): what
    /// <see cref="TryGatherColumnsAdd"/> reads one selected input's weights from as one contiguous row.</summary>
    public static bool StoredTransposed(Tensor weight) => weight.dim() == 2 && weight.stride(0) == 1 && weight.stride(1) == weight.size(0);

    // 16-byte loads: rows of K elements must start on 16-byte boundaries.
    static bool Vectorizable(Tensor t, long k) => k * t.ElementSize % 16 == 0;

    static bool Selection(Tensor selected, Tensor x) =>
        selected.dtype == ScalarType.Int64 && selected.is_contiguous() && selected.device_type == x.device_type && selected.device_index == x.device_index;

    /// <summary>
    /// DejaVu's sparse up-projection (its stage 1): y [.., k] = act(x·W[rows]ᵀ + b[rows]) for the int64 <paramref name="rows"/>
    /// [.., k] each token of x [.., in] selects, reading only those rows of W [out, in]. <paramref name="kind"/> &lt; 0: no activation
    /// (else <see cref="Models.Activation.Kind"/>); <paramref name="up"/> &gt; 0: a gated MLP whose row r is a gate and row r + up
    /// its up-projection, y = act(gate)·up.
    /// </summary>
    public static bool TryGatherRows(Tensor x, Tensor weight, Tensor? bias, Tensor rows, int kind, long up, out Tensor y)
    {
        y = null!;
        int inputs = (int)weight.size(1), k = (int)rows.size(-1);
        if (!Usable(x) || x.size(-1) != inputs || !weight.is_contiguous() || weight.dtype != x.dtype || !Vectorizable(x, inputs)
            || !Selection(rows, x) || rows.NumberOfElements / k != x.NumberOfElements / inputs) return false;
        if (bias is not null && (!bias.is_contiguous() || bias.dtype != x.dtype)) return false;
        long tokens = x.NumberOfElements / inputs;
        y = torch.empty_like(rows, x.dtype);
        IntPtr py = Ptr(y), pw = Ptr(weight), px = Ptr(x), pb = bias is null ? IntPtr.Zero : Ptr(bias), pr = Ptr(rows);
        void** args = stackalloc void*[] { &py, &pw, &px, &pb, &pr, &tokens, &k, &inputs, &kind, &up };
        const int warpsPerBlock = 8;
        CudaDriver.Launch(Kernels.Value!.GatherRows[TypeIndex(x.dtype)], (uint)((tokens * k + warpsPerBlock - 1) / warpsPerBlock), 32 * warpsPerBlock,
            LibTorchCuda.CurrentRawStream(), args);
        return true;
    }

    /// <summary>
    /// DejaVu's sparse down- and output projections (its stage 2): y = residual + a·W[:, columns]ᵀ + b for the values
    /// <paramref name="a"/> [.., kc] of the int64 <paramref name="columns"/> [.., kc] each token selects, reading only those columns of
    /// W [out, in]. A weight <see cref="StoredTransposed"/> is read a selected column at a time, each one contiguous row of Wᵀ (the
    /// MLP's neurons); a row-major one only when the columns come in aligned runs of <paramref name="run"/> (a head's block of
    /// head_dim columns, contiguous in every row of W).
    /// </summary>
    public static bool TryGatherColumnsAdd(Tensor a, Tensor weight, Tensor? bias, Tensor columns, Tensor residual, int run, out Tensor y)
    {
        y = null!;
        int outputs = (int)weight.size(0), inputs = (int)weight.size(1), kc = (int)columns.size(-1);
        long tokens = a.NumberOfElements / Math.Max(1, kc);
        if (!Usable(a) || a.size(-1) != kc || weight.dtype != a.dtype || !Selection(columns, a) || columns.NumberOfElements != a.NumberOfElements
            || !residual.is_contiguous() || residual.dtype != a.dtype || residual.NumberOfElements != tokens * outputs) return false;
        if (bias is not null && (!bias.is_contiguous() || bias.dtype != a.dtype)) return false;
        int t = TypeIndex(a.dtype), vec = 16 / (int)a.ElementSize;
        bool transposed = StoredTransposed(weight) && Vectorizable(a, outputs);
        if (!transposed && !(weight.is_contiguous() && run % vec == 0 && kc % vec == 0 && Vectorizable(a, inputs))) return false;
        y = torch.empty_like(residual);
        IntPtr stream = LibTorchCuda.CurrentRawStream();
        IntPtr py = Ptr(y), pw = Ptr(weight), pa = Ptr(a), pc = Ptr(columns), pb = bias is null ? IntPtr.Zero : Ptr(bias), pr = Ptr(residual);
        if (transposed)
        {
            // Splits of 32 selected inputs: at OPT-30B's width and 10% of its neurons, ~90 splits × 7 blocks keep every SM reading
            // (16, 64 and 128 were slower on an H100: bench/README.md, DejaVu, twenty-third session).
            const int perSplit = 32, threads = 128;
            int splits = Math.Max(1, (kc + perSplit - 1) / perSplit), per = perSplit;
            using var partial = torch.empty(new long[] { tokens * splits * outputs }, ScalarType.Float32, a.device);
            IntPtr pp = Ptr(partial);
            void** gather = stackalloc void*[] { &pp, &pw, &pa, &pc, &kc, &outputs, &per };
            CudaDriver.Launch(Kernels.Value!.GatherColumns[t], (uint)((outputs / vec + threads - 1) / threads), (uint)splits, (uint)tokens, threads, stream, gather);
            void** finish = stackalloc void*[] { &py, &pp, &pb, &pr, &splits, &outputs, &tokens };
            CudaDriver.Launch(Kernels.Value!.ColumnsFinish[t], (uint)Math.Min(65535, (tokens * outputs + 255) / 256), 256, stream, finish);
            return true;
        }
        void** args = stackalloc void*[] { &py, &pw, &pa, &pc, &pb, &pr, &kc, &outputs, &inputs, &tokens };
        const int warpsPerBlock = 8;
        CudaDriver.Launch(Kernels.Value!.GatherColumnRuns[t], (uint)((tokens * outputs + warpsPerBlock - 1) / warpsPerBlock), 32 * warpsPerBlock, stream, args);
        return true;
    }
}
