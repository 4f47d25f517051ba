using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using Tern.Checkpoints;

namespace Tern.Tests.Checkpoints;

/// <summary>
/// Seeded random mutations of a valid file's header: every open either succeeds (and then every load succeeds or
/// throws <see cref="CheckpointException"/>) or throws <see cref="CheckpointException"/>; never another exception,
/// never a hang, never an allocation sized by what the header claims rather than by the file.
/// </summary>
public sealed partial class SafetensorsFuzzTests
{
    const int Iterations = 1500;
    const int Seed = 20260526;

    const string Header =
        "{\"__metadata__\":{\"format\":\"pt\",\"seed\":\"3\"}," +
        "\"model.embed.weight\":{\"dtype\":\"F32\",\"shape\":[4,3],\"data_offsets\":[0,48]}," +
        "\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[48,54]}," +
        "\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[54,70]}," +
        "\"half\":{\"dtype\":\"F16\",\"shape\":[1,1],\"data_offsets\":[70,72]}," +
        "\"flag\":{\"dtype\":\"BOOL\",\"shape\":[],\"data_offsets\":[72,73]}}";

    static readonly string[] Numbers =
    [
        "0", "1", "-1", "2", "3", "48", "54", "72", "73", "4.0", "1e3", "-0", "4294967296", "9223372036854775807",
        "9223372036854775808", "18446744073709551615", "18446744073709551616", "99999999999999999999999999", "100000000",
    ];

    static readonly string[] Dtypes =
    [
        "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F64", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2",
        "f32", "F33", "", "FLOAT", "complex64", "\\u0046\\u0033\\u0032",
    ];

    static readonly string[] Fragments = ["{", "}", "[", "]", ",", ":", "\"", "null", "true", "[]", "{}", "\"__metadata__\"", " ", "\\", "\u00e9", "\uFFFF"];

    [GeneratedRegex(@"-?\d+(\.\d+)?([eE][+-]?\d+)?")]
    private static partial Regex NumberToken();

    [GeneratedRegex(@"""dtype"":""([^""]*)""")]
    private static partial Regex DtypeToken();

    [Fact]
    public async Task MutatedHeadersOnlyEverThrowCheckpointException()
    {
        byte[] data = new byte[73];
        new Random(1).NextBytes(data);
        byte[] valid = Raw.File(Header.PadRight((Header.Length + 7) / 8 * 8), data);

        using var dir = new TempDir();
        string path = dir.File("fuzz.safetensors");

        // Warm up (TorchSharp's native init, JIT) and check the unmutated file is accepted.
        File.WriteAllBytes(path, valid);
        using (var file = SafetensorsFile.Open(path))
        {
            foreach (var info in file.Tensors)
            {
                file.Load(info).Dispose();
            }
        }

        int opened = 0, rejected = 0, loadRejected = 0;
        string? failure = null;
        var worker = Task.Factory.StartNew(() =>
        {
            var rng = new Random(Seed);
            for (int i = 0; i < Iterations && failure is null; i++)
            {
                byte[] mutated = Mutate(valid, rng);
                File.WriteAllBytes(path, mutated);
                var clock = Stopwatch.StartNew();
                long allocated = GC.GetAllocatedBytesForCurrentThread();
                try
                {
                    using var file = SafetensorsFile.Open(path);
                    opened++;
                    foreach (var info in file.Tensors)
                    {
                        if (info.ByteLength > mutated.Length || info.FileOffset + info.ByteLength > mutated.Length)
                        {
                            failure = $"iteration {i}: tensor '{info.Name}' claims {info.ByteLength} bytes at {info.FileOffset} in a {mutated.Length}-byte file";
                            break;
                        }
                        try
                        {
                            file.Load(info).Dispose();
                        }
                        catch (CheckpointException ex) when (ex.Message.Contains(path))
                        {
                            loadRejected++;
                        }
                    }
                }
                catch (CheckpointException ex) when (ex.Message.StartsWith(path + ": ", StringComparison.Ordinal))
                {
                    rejected++;
                }
                catch (Exception ex)
                {
                    failure = $"iteration {i}: {ex.GetType().Name}: {ex.Message}\nfile (base64): {Convert.ToBase64String(mutated)}\n{ex}";
                }
                long used = GC.GetAllocatedBytesForCurrentThread() - allocated;
                if (failure is null && used > 256 * 1024 + 4L * mutated.Length)
                {
                    failure = $"iteration {i}: allocated {used} bytes for a {mutated.Length}-byte file\nfile (base64): {Convert.ToBase64String(mutated)}";
                }
                if (failure is null && clock.Elapsed > TimeSpan.FromSeconds(2))
                {
                    failure = $"iteration {i}: took {clock.Elapsed}\nfile (base64): {Convert.ToBase64String(mutated)}";
                }
            }
        }, TaskCreationOptions.LongRunning);

        var finished = await Task.WhenAny(worker, Task.Delay(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken));
        Assert.True(finished == worker, "the fuzz loop did not finish within 60 s (a hang?)");
        await worker;
        Assert.Null(failure);
        TestContext.Current.TestOutputHelper?.WriteLine($"{Iterations} mutations: {opened} opened ({loadRejected} loads refused), {rejected} rejected");
        Assert.Equal(Iterations, opened + rejected);
        // The mutations must exercise both outcomes.
        Assert.True(rejected > Iterations / 2, $"only {rejected} rejections");
        Assert.True(opened > 10, $"only {opened} successful opens");
    }

    static byte[] Mutate(byte[] valid, Random rng)
    {
        var bytes = new List<byte>(valid);
        int rounds = 1 + rng.Next(3);
        for (int r = 0; r < rounds; r++)
        {
            int headerLength = 0;
            if (bytes.Count >= 8)
            {
                ulong declared = BitConverter.ToUInt64([.. bytes.GetRange(0, 8)]);
                headerLength = (int)Math.Min(declared, (ulong)(bytes.Count - 8));
            }
            int kind = rng.Next(11);
            switch (kind)
            {
                case 0 when headerLength > 0: // random byte
                    bytes[8 + rng.Next(headerLength)] = (byte)rng.Next(256);
                    break;
                case 1 when headerLength > 0: // bit flip
                    bytes[8 + rng.Next(headerLength)] ^= (byte)(1 << rng.Next(8));
                    break;
                case 2: // insert bytes in the header, fixing the length field or not
                {
                    int at = 8 + rng.Next(headerLength + 1);
                    int n = 1 + rng.Next(4);
                    for (int k = 0; k < n; k++) bytes.Insert(Math.Min(at, bytes.Count), (byte)rng.Next(32, 127));
                    if (rng.Next(2) == 0) SetLength(bytes, (ulong)(headerLength + n));
                    break;
                }
                case 3 when headerLength > 0: // delete bytes from the header, fixing the length field or not
                {
                    int at = 8 + rng.Next(headerLength);
                    int n = Math.Min(1 + rng.Next(4), bytes.Count - at);
                    bytes.RemoveRange(at, n);
                    if (rng.Next(2) == 0) SetLength(bytes, (ulong)(headerLength - n));
                    break;
                }
                case 4: // length field
                {
                    ulong[] choices = [0, 1, 2, (ulong)headerLength - 1, (ulong)headerLength + 1, (ulong)headerLength + 8, (ulong)bytes.Count,
                        (ulong)bytes.Count - 7, 100_000_000, 100_000_001, ulong.MaxValue, (ulong)long.MaxValue, (ulong)rng.NextInt64()];
                    if (bytes.Count < 8) bytes.AddRange(new byte[8 - bytes.Count]);
                    SetLength(bytes, choices[rng.Next(choices.Length)]);
                    break;
                }
                case 5: // truncate anywhere
                {
                    int cut = rng.Next(bytes.Count + 1);
                    bytes.RemoveRange(cut, bytes.Count - cut);
                    break;
                }
                case 6: // append garbage
                {
                    int n = 1 + rng.Next(16);
                    for (int k = 0; k < n; k++) bytes.Add((byte)rng.Next(256));
                    break;
                }
                default: // JSON-aware edits on the header text, keeping the length field right most of the time
                    EditJson(bytes, headerLength, kind, rng);
                    break;
            }
        }
        return bytes.ToArray();
    }

    static void EditJson(List<byte> bytes, int headerLength, int kind, Random rng)
    {
        if (bytes.Count < 8 + headerLength) return;
        string header = Encoding.UTF8.GetString(bytes.GetRange(8, headerLength).ToArray());
        string edited = header;
        switch (kind)
        {
            case 7: // a number replaced by an awkward one
            {
                var matches = NumberToken().Matches(header);
                if (matches.Count == 0) return;
                var m = matches[rng.Next(matches.Count)];
                edited = header[..m.Index] + Numbers[rng.Next(Numbers.Length)] + header[(m.Index + m.Length)..];
                break;
            }
            case 8: // a dtype replaced
            {
                var matches = DtypeToken().Matches(header);
                if (matches.Count == 0) return;
                var g = matches[rng.Next(matches.Count)].Groups[1];
                edited = header[..g.Index] + Dtypes[rng.Next(Dtypes.Length)] + header[(g.Index + g.Length)..];
                break;
            }
            case 9: // a structural fragment inserted or replacing a character
            {
                int at = rng.Next(header.Length + 1);
                string frag = Fragments[rng.Next(Fragments.Length)];
                edited = rng.Next(2) == 0 || at == header.Length
                    ? header[..at] + frag + header[at..]
                    : header[..at] + frag + header[(at + 1)..];
                break;
            }
            default: // a substring duplicated (duplicate keys, repeated entries) or dropped
            {
                int a = rng.Next(header.Length + 1), b = rng.Next(header.Length + 1);
                (a, b) = (Math.Min(a, b), Math.Max(a, b));
                edited = rng.Next(2) == 0 ? header[..b] + header[a..b] + header[b..] : header[..a] + header[b..];
                break;
            }
        }
        byte[] text = Encoding.UTF8.GetBytes(edited);
        bytes.RemoveRange(8, headerLength);
        bytes.InsertRange(8, text);
        if (rng.Next(5) != 0) SetLength(bytes, (ulong)text.Length);
    }

    static void SetLength(List<byte> bytes, ulong length)
    {
        byte[] le = BitConverter.GetBytes(length);
        for (int k = 0; k < 8 && k < bytes.Count; k++) bytes[k] = le[k];
    }
}
