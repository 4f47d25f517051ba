using System.Runtime.InteropServices;

namespace Tern.Interop;

/// <summary>
/// Machine code that the process generated (<see cref="CpuKernels"/>' AVX512_BF16 products, encoded by Iced), copied into
/// pages of their own and made executable: written while readable and writable, then switched to readable and executable
/// (never both writable and executable). Linux only; kept for the life of the process.
/// </summary>
internal static partial class ExecutableMemory
{
    const int ProtRead = 1, ProtWrite = 2, ProtExec = 4, MapPrivate = 0x02, MapAnonymous = 0x20;

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, nint offset);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    private static partial int Mprotect(nint address, nuint length, int protection);

    [LibraryImport("libc", EntryPoint = "munmap")]
    private static partial int Munmap(nint address, nuint length);

    /// <summary>The address of an executable copy of <paramref name="code"/>, or null where the system refuses to map one
    /// (not Linux, or a policy against writable-then-executable pages).</summary>
    public static unsafe void* TryMap(ReadOnlySpan<byte> code)
    {
        if (!OperatingSystem.IsLinux() || code.IsEmpty) return null;
        nuint length = (nuint)((code.Length + Environment.SystemPageSize - 1) / Environment.SystemPageSize * Environment.SystemPageSize);
        try
        {
            nint pages = Mmap(0, length, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
            if (pages == -1) return null;
            code.CopyTo(new Span<byte>((void*)pages, code.Length));
            if (Mprotect(pages, length, ProtRead | ProtExec) == 0) return (void*)pages;
            Munmap(pages, length);
            return null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return null;
        }
    }
}
