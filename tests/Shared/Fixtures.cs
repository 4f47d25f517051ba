namespace Tern.Tests;

/// <summary>The committed test fixtures (<c>tests/fixtures</c>), found by walking up from the test binaries.</summary>
public static class Fixtures
{
    static readonly Lazy<string> RootPath = new(FindRoot);

    /// <summary>The <c>tests/fixtures</c> folder, as a full path.</summary>
    public static string Root => RootPath.Value;

    /// <summary>A model fixture folder, <c>tests/fixtures/models/NAME</c> (config.json, weights, reference.safetensors).</summary>
    /// <exception cref="DirectoryNotFoundException">No such fixture.</exception>
    public static string ModelDir(string name) => Existing(Path.Combine(Root, "models", name));

    /// <summary>A tokenizer fixture folder, <c>tests/fixtures/tokenizers/NAME</c>.</summary>
    /// <exception cref="DirectoryNotFoundException">No such fixture.</exception>
    public static string TokenizerDir(string name) => Existing(Path.Combine(Root, "tokenizers", name));

    /// <summary>The names of the model fixtures, sorted.</summary>
    public static IReadOnlyList<string> ModelNames =>
        Directory.EnumerateDirectories(Path.Combine(Root, "models")).Select(d => Path.GetFileName(d)!).Order(StringComparer.Ordinal).ToArray();

    static string Existing(string dir) =>
        Directory.Exists(dir) ? dir : throw new DirectoryNotFoundException($"Test fixture folder not found: {dir}");

    static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "tests", "fixtures");
            if (Directory.Exists(candidate))
            {
                return candidate;
            }
        }
        throw new DirectoryNotFoundException($"No tests/fixtures folder above {AppContext.BaseDirectory}.");
    }
}
