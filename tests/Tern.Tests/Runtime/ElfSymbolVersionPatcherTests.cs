using Tern.Build;

namespace Tern.Tests.Runtime;

/// <summary>
/// The build step that lets TorchSharp 0.107's libLibTorchSharp.so load on Debian 12 (build/ElfSymbolVersionPatcher.cs,
/// compiled into this project): it marks the library's GLIBCXX_3.4.32 requirement weak and changes nothing else.
/// </summary>
public sealed class ElfSymbolVersionPatcherTests : IDisposable
{
    readonly string dir = Path.Combine(Path.GetTempPath(), "tern-elf-tests", Guid.NewGuid().ToString("N"));

    public ElfSymbolVersionPatcherTests() => Directory.CreateDirectory(dir);

    public void Dispose()
    {
        try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>The copy the build put next to the test assembly (patched by the build where the host needs it).</summary>
    static string OutputLibrary => Path.Combine(AppContext.BaseDirectory, "runtimes/linux-x64/native/libLibTorchSharp.so");

    /// <summary>The copy as shipped in the NuGet package (never patched), or a skip.</summary>
    static string ShippedLibrary()
    {
        string root = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } env
            ? env
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string path = Path.Combine(root, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        if (!File.Exists(path)) Assert.Skip($"the TorchSharp 0.107.0 package is not in the NuGet cache ({path})");
        return path;
    }

    string Copy(string source, string name = "libLibTorchSharp.so")
    {
        string path = Path.Combine(dir, name);
        File.Copy(source, path, overwrite: true);
        return path;
    }

    string Write(string name, byte[] bytes)
    {
        string path = Path.Combine(dir, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [Fact]
    public void TheShippedLibraryRequiresTheVersionNonWeak()
    {
        string shipped = ShippedLibrary();
        Assert.Equal("GLIBCXX_3.4.32", ElfSymbolVersionPatcher.DefaultVersion);
        Assert.False(ElfSymbolVersionPatcher.IsWeak(shipped));
        // Patched (not NotRequired): the requirement is there, and it was not weak.
        Assert.Equal(ElfPatchOutcome.Patched, ElfSymbolVersionPatcher.Patch(Copy(shipped)));
    }

    [Fact]
    public void PatchMarksTheRequirementWeakAndChangesOnlyItsFlags()
    {
        string path = Copy(ShippedLibrary());
        byte[] before = File.ReadAllBytes(path);
        Assert.Equal(ElfPatchOutcome.Patched, ElfSymbolVersionPatcher.Patch(path));
        Assert.True(ElfSymbolVersionPatcher.IsWeak(path));
        byte[] after = File.ReadAllBytes(path);
        Assert.Equal(before.Length, after.Length);
        var changed = Enumerable.Range(0, before.Length).Where(i => before[i] != after[i]).ToArray();
        Assert.InRange(changed.Length, 1, 2);
        Assert.True(changed[^1] - changed[0] <= 1, $"bytes changed at {string.Join(", ", changed)}: more than one 16-bit flags field");
        // The (little-endian) flags gained VER_FLG_WEAK (0x2) and nothing else.
        Assert.Single(changed);
        Assert.Equal(0x02, after[changed[0]] ^ before[changed[0]]);
        Assert.False(File.Exists(path + ".tern-patch.tmp"), "the temporary file was left behind");

        // Idempotent.
        Assert.Equal(ElfPatchOutcome.AlreadyWeak, ElfSymbolVersionPatcher.Patch(path));
        Assert.Equal(after, File.ReadAllBytes(path));
    }

    [Fact]
    public void TheBuildPatchedTheOutputCopyWhereTheHostNeedsIt()
    {
        Assert.True(File.Exists(OutputLibrary), $"{OutputLibrary} is missing");
        if (ElfSymbolVersionPatcher.HostLibStdCxxHas())
            Assert.Skip("this host's libstdc++ has GLIBCXX_3.4.32: the build leaves libLibTorchSharp.so as it is");
        Assert.True(ElfSymbolVersionPatcher.IsWeak(OutputLibrary), "the build step did not patch the output copy");
        Assert.Equal(ElfPatchOutcome.AlreadyWeak, ElfSymbolVersionPatcher.Patch(Copy(OutputLibrary)));
        // Byte for byte what the patcher makes of the shipped file.
        string shipped = Copy(ShippedLibrary(), "shipped.so");
        ElfSymbolVersionPatcher.Patch(shipped);
        Assert.Equal(File.ReadAllBytes(shipped), File.ReadAllBytes(OutputLibrary));
    }

    [Fact]
    public void HostLibStdCxxHasFindsVersionsOfTheHostLibrary()
    {
        string[] candidates = { "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/lib64/libstdc++.so.6" };
        if (!OperatingSystem.IsLinux() || !candidates.Any(File.Exists)) Assert.Skip("no libstdc++ at the usual places");
        Assert.True(ElfSymbolVersionPatcher.HostLibStdCxxHas("GLIBCXX_3.4"));
        Assert.False(ElfSymbolVersionPatcher.HostLibStdCxxHas("GLIBCXX_99.9.99"));
    }

    [Fact]
    public void AFileWithoutTheRequirementIsLeftAlone()
    {
        if (!File.Exists("/bin/ls")) Assert.Skip("no /bin/ls");
        string ls = Copy("/bin/ls", "ls");
        byte[] before = File.ReadAllBytes(ls);
        Assert.Equal(ElfPatchOutcome.NotRequired, ElfSymbolVersionPatcher.Patch(ls));
        Assert.False(ElfSymbolVersionPatcher.IsWeak(ls));
        Assert.Equal(before, File.ReadAllBytes(ls));

        string lib = Copy(ShippedLibrary());
        byte[] libBefore = File.ReadAllBytes(lib);
        Assert.Equal(ElfPatchOutcome.NotRequired, ElfSymbolVersionPatcher.Patch(lib, "GLIBCXX_9.9.99"));
        Assert.False(ElfSymbolVersionPatcher.IsWeak(lib, "GLIBCXX_9.9.99"));
        Assert.Equal(libBefore, File.ReadAllBytes(lib));
    }

    public static TheoryData<string> Malformed => new() { "text", "empty", "short", "truncated", "elf32", "big-endian" };

    [Theory]
    [MemberData(nameof(Malformed))]
    public void AMalformedFileIsRejectedWithItsPath(string kind)
    {
        byte[] lib = File.ReadAllBytes(OutputLibrary);
        byte[] bytes = kind switch
        {
            "text" => System.Text.Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("not an ELF file at all\n", 10))),
            "empty" => Array.Empty<byte>(),
            "short" => lib[..10],
            "truncated" => lib[..(lib.Length / 2)],
            "elf32" => WithByte(lib, 4, 1),
            "big-endian" => WithByte(lib, 5, 2),
            _ => throw new ArgumentException(kind),
        };
        string path = Write($"{kind}.so", bytes);
        var patch = Assert.Throws<InvalidDataException>(() => ElfSymbolVersionPatcher.Patch(path));
        Assert.Contains(path, patch.Message);
        var weak = Assert.Throws<InvalidDataException>(() => ElfSymbolVersionPatcher.IsWeak(path));
        Assert.Contains(path, weak.Message);
        Assert.Equal(bytes, File.ReadAllBytes(path));
    }

    /// <summary>Offsets in a corrupt header that make <c>offset + size</c> wrap around 2^64 must be refused as malformed,
    /// like any other corruption, not surface as an OverflowException or an index error.</summary>
    [Theory]
    [InlineData("section-header-offset")]
    [InlineData("verneed-offset")]
    [InlineData("string-table-offset")]
    public void OffsetsThatWrapAroundAreRejectedAsMalformed(string field)
    {
        byte[] image = File.ReadAllBytes(OutputLibrary);
        ulong shoff = BitConverter.ToUInt64(image, 0x28);
        int shentsize = BitConverter.ToUInt16(image, 0x3A), shnum = BitConverter.ToUInt16(image, 0x3C);
        if (field == "section-header-offset")
            BitConverter.GetBytes(ulong.MaxValue - (ulong)shentsize + 1).CopyTo(image, 0x28);
        else
        {
            int section = Enumerable.Range(0, shnum).Select(s => (int)shoff + s * shentsize)
                .Single(sh => BitConverter.ToUInt32(image, sh + 4) == 0x6ffffffe); // SHT_GNU_verneed
            if (field == "string-table-offset")
                section = (int)shoff + (int)BitConverter.ToUInt32(image, section + 0x28) * shentsize; // its sh_link
            ulong size = BitConverter.ToUInt64(image, section + 0x20);
            BitConverter.GetBytes(ulong.MaxValue - size + 1).CopyTo(image, section + 0x18); // sh_offset + sh_size wraps to 0
        }
        string path = Write($"{field}.so", image);
        var ex = Assert.Throws<InvalidDataException>(() => ElfSymbolVersionPatcher.Patch(path));
        Assert.Contains(path, ex.Message);
    }

    static byte[] WithByte(byte[] source, int at, byte value)
    {
        var copy = (byte[])source.Clone();
        copy[at] = value;
        return copy;
    }
}
