using System.CommandLine;
using Tern.Checkpoints;
using Tern.Models;
using Tern.Offloading;
using Tern.Runtime;
using Tern.Tokenization;

namespace Tern.Cli.Commands;

/// <summary>Options shared by the commands that load a model.</summary>
internal sealed class CommonOptions
{
    /// <summary>Folder of the model shipped with Tern, relative to the executable or the repository.</summary>
    public const string DefaultModelFolder = "models/default";

    public Option<string?> Model { get; } = new("--model", "-m") { Description = "Hugging Face model folder (config.json, safetensors, tokenizer files)." };
    public Option<string> Device { get; } = new("--device") { Description = "cpu, cuda or auto.", DefaultValueFactory = _ => "auto" };
    public Option<string> DType { get; } = new("--dtype") { Description = "fp32, bf16 or fp16 (default: fp32 on CPU, bf16 on CUDA)." };
    public Option<bool> Dummy { get; } = new("--dummy") { Description = "Build the model from config.json alone with random weights (throughput work)." };

    public CommonOptions()
    {
        Device.AcceptOnlyFromAmong("cpu", "cuda", "auto");
        DType.AcceptOnlyFromAmong("fp32", "bf16", "fp16");
    }

    public void AddTo(Command command)
    {
        command.Options.Add(Model);
        command.Options.Add(Device);
        command.Options.Add(DType);
        command.Options.Add(Dummy);
    }

    public string ResolveModelFolder(ParseResult result)
    {
        string? folder = result.GetValue(Model);
        if (!string.IsNullOrEmpty(folder)) return folder;
        foreach (string candidate in new[] { Path.Combine(AppContext.BaseDirectory, DefaultModelFolder), DefaultModelFolder })
            if (File.Exists(Path.Combine(candidate, "config.json"))) return candidate;
        throw new ArgumentException(
            "no --model given and no default model is shipped yet: pass a Hugging Face model folder, e.g. --model tests/fixtures/models/llama-gqa");
    }

    /// <summary>The model (and tokenizer) the options name, with a progress line on stderr while the weights load when that
    /// takes more than a second (with <paramref name="progress"/>, from the start), ended by a newline.</summary>
    public (CausalLanguageModel Model, TernTokenizer? Tokenizer, string Folder) Load(ParseResult result, bool needTokenizer, bool progress = false)
    {
        var (folder, options) = LoadOptions(result);
        var bar = new ConsoleProgress($"loading {folder}", progress ? TimeSpan.Zero : TimeSpan.FromSeconds(1));
        TernTokenizer? tokenizer = null;
        if (needTokenizer) tokenizer = TernTokenizer.Load(folder);
        var model = CausalLanguageModel.Load(folder, options with { Progress = bar });
        bar.End();
        return (model, tokenizer, folder);
    }

    /// <summary>An offloaded model (FlexGen) loaded with a progress line on stderr (ended by a newline), then placed by its policy.</summary>
    public static OffloadedModel LoadOffloaded(string folder, ModelLoadOptions load, OffloadOptions options)
    {
        var bar = new ConsoleProgress($"loading {folder}");
        var model = OffloadedModel.Load(folder, load with { Progress = bar }, options);
        bar.End();
        return model;
    }

    /// <summary>The model folder and how to load it (device, dtype, dummy weights), without loading.</summary>
    public (string Folder, ModelLoadOptions Options) LoadOptions(ParseResult result)
    {
        string folder = ResolveModelFolder(result);
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"--model: the folder '{folder}' does not exist.");
        var device = ComputeOptions.ResolveDevice(ComputeOptions.ParseDevice(result.GetValue(Device)!));
        string? dtypeText = result.GetValue(DType);
        var dtype = dtypeText is null
            ? (device.type == TorchSharp.DeviceType.CUDA ? ModelDType.BFloat16 : ModelDType.Float32)
            : ComputeOptions.ParseDType(dtypeText);
        var options = new ModelLoadOptions
        {
            Device = device.type == TorchSharp.DeviceType.CUDA ? DeviceKind.Cuda : DeviceKind.Cpu,
            DType = dtype,
            DummyWeights = result.GetValue(Dummy) ? new DummyWeightOptions() : null,
        };
        return (folder, options);
    }
}
