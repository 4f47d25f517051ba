namespace Tern.Tests;

/// <summary>Paths of the checked-in HF parity fixtures (<c>tests/fixtures</c>).</summary>
public static class Fixtures
{
    private static readonly Lazy<string> RootPath = new(FindRoot);

    /// <summary>The <c>tests/fixtures</c> folder, found by walking up from the test assembly's folder.</summary>
    public static string Root => RootPath.Value;

    /// <summary><c>tests/fixtures/models/<paramref name="name"/></c>.</summary>
    public static string ModelDir(string name) => Path.Combine(Root, "models", name);

    /// <summary><c>tests/fixtures/tokenizers/<paramref name="name"/></c>.</summary>
    public static string TokenizerDir(string name) => Path.Combine(Root, "tokenizers", name);

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "tests", "fixtures");
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException($"No tests/fixtures folder above {AppContext.BaseDirectory}.");
    }
}
