using System.Diagnostics;
using Microsoft.Win32.SafeHandles;

namespace Tern.Offloading;

/// <summary>
/// The disk tier's private folder: <c>tern-offload-PID-ID</c> under the directory the user names (FlexGen's
/// <c>--offload-dir</c>). Files are preallocated when created, so a full disk fails at once with a clear error rather than
/// mid-generation; the folder and everything in it are deleted by <see cref="Dispose"/> (and folders left by a process that
/// died are removed by the next one).
/// </summary>
public sealed class OffloadDirectory : IDisposable
{
    const string Prefix = "tern-offload-";
    readonly List<SafeFileHandle> handles = new();
    int files;

    OffloadDirectory(string path) => Path = path;

    /// <summary>The private folder.</summary>
    public string Path { get; }

    /// <summary>Creates the private folder under <paramref name="parent"/>, which must exist and be writable.</summary>
    public static OffloadDirectory Create(string parent)
    {
        string full = System.IO.Path.GetFullPath(parent);
        if (!Directory.Exists(full))
            throw new DirectoryNotFoundException($"offload directory {full} does not exist; create it or choose another.");
        RemoveOrphans(full);
        string path = System.IO.Path.Combine(full, $"{Prefix}{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(path);
            // Directory.CreateDirectory succeeds on some read-only mounts' caches; a real file proves the folder is writable.
            string probe = System.IO.Path.Combine(path, ".probe");
            File.WriteAllBytes(probe, new byte[] { 1 });
            File.Delete(probe);
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            TryDelete(path);
            throw new UnauthorizedAccessException($"offload directory {full} is not writable ({e.Message}); choose a writable folder.", e);
        }
        return new OffloadDirectory(path);
    }

    /// <summary>A new file of exactly <paramref name="bytes"/> bytes (space reserved now), open for reading and writing and
    /// deleted when its handle is closed (or when the folder is disposed). <paramref name="name"/> is a readable label.</summary>
    public SafeFileHandle CreateFile(string name, long bytes)
    {
        string path = System.IO.Path.Combine(Path, $"{Interlocked.Increment(ref files):D5}-{name}.bin");
        try
        {
            var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.DeleteOnClose, preallocationSize: bytes);
            lock (handles) handles.Add(handle);
            return handle;
        }
        catch (IOException e)
        {
            TryDeleteFile(path);
            throw new IOException(
                $"offload directory {Path}: cannot reserve {Units.Bytes(bytes)} for {name} ({e.Message}); free disk space, lower the disk share of the policy, or choose another offload directory.", e);
        }
    }

    /// <summary>Bytes free on the folder's file system.</summary>
    public long FreeBytes => new DriveInfo(Path).AvailableFreeSpace;

    /// <summary>Closes every file and deletes the folder.</summary>
    public void Dispose()
    {
        lock (handles)
        {
            foreach (var h in handles) h.Dispose();
            handles.Clear();
        }
        TryDelete(Path);
    }

    static void RemoveOrphans(string parent)
    {
        foreach (string dir in Directory.EnumerateDirectories(parent, Prefix + "*"))
        {
            string rest = System.IO.Path.GetFileName(dir)[Prefix.Length..];
            int dash = rest.IndexOf('-');
            if (dash > 0 && int.TryParse(rest[..dash], out int pid) && pid != Environment.ProcessId && !Alive(pid)) TryDelete(dir);
        }
    }

    static bool Alive(int pid)
    {
        try
        {
            using var p = Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    static void TryDelete(string dir)
    {
        try { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    static void TryDeleteFile(string path)
    {
        try { File.Delete(path); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
