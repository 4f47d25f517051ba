namespace Tern.Runtime;

/// <summary>Writes folders so that a crash or an error never leaves a partial folder at the destination.</summary>
public static class AtomicFolder
{
    /// <summary>
    /// Runs <paramref name="write"/> on a temporary folder beside <paramref name="destination"/> (same parent, so the rename
    /// cannot cross file systems), then renames it to the destination. A destination that exists and is not empty is refused
    /// (<see cref="IOException"/>) before anything is written; on failure the temporary folder is removed.
    /// </summary>
    public static void Write(string destination, Action<string> write)
    {
        string to = Path.GetFullPath(destination);
        if (Directory.Exists(to) && Directory.EnumerateFileSystemEntries(to).Any())
            throw new IOException($"the output folder '{to}' exists and is not empty; choose a new folder or remove it.");
        string temp = Path.Combine(Path.GetDirectoryName(to)!, $".{Path.GetFileName(to)}.{Guid.NewGuid():N}.tmp");
        Directory.CreateDirectory(temp);
        try
        {
            write(temp);
            if (Directory.Exists(to)) Directory.Delete(to);
            Directory.Move(temp, to);
        }
        catch
        {
            try { Directory.Delete(temp, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }
}
