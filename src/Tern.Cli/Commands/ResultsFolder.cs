namespace Tern.Cli.Commands;

/// <summary>Where <c>tern bench</c>, <c>tern eval</c>, <c>tern lab</c> and <c>tern offload calibrate</c> write when -o/--output
/// is not given: a per-user folder, never the current checkout (whose bench/ holds tracked, published results).</summary>
internal static class ResultsFolder
{
    /// <summary><paramref name="name"/> under the user's data folder (~/.local/share/tern on Linux), or under ./tern-results
    /// when the user has none.</summary>
    public static string For(string name)
    {
        string data = Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.DoNotVerify);
        return Path.Combine(data.Length > 0 ? Path.Combine(data, "tern") : Path.GetFullPath("tern-results"), name);
    }
}
