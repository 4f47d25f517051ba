using System.Text;
using Tern.Runtime;

namespace Tern.Labs;

/// <summary>Text outputs of the labs, written atomically.</summary>
internal static class LabFiles
{
    /// <summary>Writes <paramref name="text"/> (UTF-8) to <paramref name="directory"/>/<paramref name="name"/>; returns the path.</summary>
    public static string Write(string directory, string name, string text)
    {
        string path = Path.Combine(directory, name);
        AtomicFile.Write(path, s => s.Write(Encoding.UTF8.GetBytes(text)));
        return path;
    }
}
