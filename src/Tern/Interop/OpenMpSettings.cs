using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Tern.Interop;

/// <summary>
/// libtorch's CPU threads (GNU OpenMP) spin after every parallel region by default, holding the other cores while the decode
/// step goes on: the CPU kernels' own split of a linear map over the cores (<see cref="CoreTeam"/>) then shares its core with
/// a spinning thread. The 1.1B shape's fp32 decode step on the 2-core development machine, batch 1 / 8: 286–300 / 641–667 ms
/// split beside spinning threads (unsplit 220–239 / 639–651), 149–179 / 410–455 ms once they sleep (<c>OMP_WAIT_POLICY=PASSIVE</c>).
/// libgomp reads the variable once, when it is loaded, so it is set when this assembly is loaded, before Tern touches
/// libtorch; a value the user set is kept.
/// </summary>
internal static partial class OpenMpSettings
{
    [ModuleInitializer]
    [SuppressMessage("Usage", "CA2255", Justification = "libgomp reads its environment once, when libtorch loads it: this must run first.")]
    internal static void PassiveWaitUnlessSet()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is not null) return;
        try
        {
            SetEnvironment("OMP_WAIT_POLICY", "PASSIVE", 0);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // not glibc: the default policy stays
        }
    }

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnvironment(string name, string value, int overwrite);
}
