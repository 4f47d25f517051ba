using System.Text;
using Tern.Checkpoints;

namespace Tern.Tests.Checkpoints;

internal static class Raw
{
    /// <summary>A safetensors file image: the 8-byte length of <paramref name="header"/> (or <paramref name="lengthOverride"/>), the header, the data.</summary>
    public static byte[] File(string header, byte[]? data = null, ulong? lengthOverride = null)
    {
        byte[] json = Encoding.UTF8.GetBytes(header);
        data ??= [];
        var bytes = new byte[8 + json.Length + data.Length];
        BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), lengthOverride ?? (ulong)json.Length);
        json.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + json.Length);
        return bytes;
    }

    /// <summary>Writes <paramref name="bytes"/> to <paramref name="name"/> in <paramref name="dir"/> and returns the path.</summary>
    public static string Save(TempDir dir, string name, byte[] bytes)
    {
        string path = dir.File(name);
        System.IO.File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>Opening <paramref name="path"/> must fail with a <see cref="CheckpointException"/> whose message names
    /// the file and contains every fragment.</summary>
    public static CheckpointException AssertRejected(string path, params string[] fragments)
    {
        var ex = Assert.Throws<CheckpointException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Contains(path, ex.Message);
        foreach (var f in fragments)
        {
            Assert.Contains(f, ex.Message);
        }
        return ex;
    }
}
