using System.CommandLine;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Runtime;
using Tern.Tokenization;
using TorchSharp;

namespace Tern.Cli.Commands;

/// <summary><c>tern info DIR</c>: architecture, parameter count, memory per dtype, tokenizer.</summary>
internal static class InfoCommand
{
    public static Command Create()
    {
        var dir = new Argument<string>("model") { Description = "Hugging Face model folder." };
        var command = new Command("info", "Describe a model folder: architecture, parameters, memory per dtype, tokenizer.") { dir };
        command.SetAction(r => Run(r.GetValue(dir)!));
        return command;
    }

    static int Run(string folder)
    {
        var config = HfConfig.Load(folder);
        // Build on the meta device: shapes and counts without allocating a byte of weights.
        using var source = DummyWeightSource.Create(new DummyWeightOptions { Kind = DummyWeightKind.Constant });
        using var model = CausalLanguageModel.Create(config, source, new torch.Device(DeviceType.META), ModelDType.Float32);
        var info = model.Info;
        Console.WriteLine($"folder:        {Path.GetFullPath(folder)}");
        Console.WriteLine($"architecture:  {info.ModelType} ({string.Join(", ", config.Json["architectures"]?.AsArray().Select(a => a!.ToString()) ?? Array.Empty<string>())})");
        Console.WriteLine($"shape:         {info.Layers} layers, hidden {info.HiddenSize}, {info.Heads} heads ({info.KvHeads} KV heads) of {info.HeadDim}, vocab {info.VocabSize}");
        Console.WriteLine($"context:       {info.MaxPositions} tokens ({(info.LearnedPositions ? "learned positions" : "rotary positions")})");
        Console.WriteLine($"parameters:    {info.ParameterCount:N0} ({info.ParameterCount / 1e6:F1}M)");
        foreach (var dtype in new[] { ModelDType.Float32, ModelDType.BFloat16, ModelDType.Float16 })
            Console.WriteLine($"memory {dtype.ShortName(),-5}:  weights {Gb(info.ParameterCount * dtype.ElementSize())}, KV cache {Mb(info.KvBytesPerToken(dtype.ElementSize()))} per token " +
                              $"({Gb(info.KvBytesPerToken(dtype.ElementSize()) * info.MaxPositions)} for one full context)");
        string weights = File.Exists(Path.Combine(folder, "model.safetensors.index.json")) ? "sharded safetensors (index)"
            : File.Exists(Path.Combine(folder, "model.safetensors")) ? "model.safetensors" : "none found";
        Console.WriteLine($"weights:       {weights}");
        try
        {
            Console.WriteLine($"tokenizer:     {TernTokenizer.Load(folder).Describe()}");
        }
        catch (TokenizerException e)
        {
            Console.WriteLine($"tokenizer:     none usable ({e.Message})");
        }
        return 0;
    }

    static string Gb(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F2} GiB" : $"{bytes / (double)(1L << 20):F1} MiB";
    static string Mb(long bytes) => bytes >= 1L << 20 ? $"{bytes / (double)(1L << 20):F2} MiB" : $"{bytes / 1024.0:F1} KiB";
}
