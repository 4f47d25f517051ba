using System.CommandLine;
using Tern.Compression;
using Tern.Models;
using Tern.Runtime;

namespace Tern.Cli.Commands;

/// <summary><c>tern compress</c>: post-training compression (GPTQ, SparseGPT, round-to-nearest) into a new model folder.</summary>
internal static class CompressCommand
{
    public static Command Create()
    {
        var d = new CompressionOptions();
        var common = new CommonOptions();
        var method = new Option<string>("--method") { Description = "gptq, sparsegpt or rtn (round to nearest, no calibration).", DefaultValueFactory = _ => "gptq" };
        method.AcceptOnlyFromAmong("gptq", "sparsegpt", "rtn");
        var bits = new Option<int?>("--bits") { Description = "Bits per weight: 2, 3, 4 or 8 (default 4; sparsegpt: prune only unless given, then joint)." };
        var groupSize = new Option<int>("--group-size") { Description = "Input columns per quantization grid (0: one grid per row).", DefaultValueFactory = _ => d.GroupSize };
        var sparsity = new Option<double>("--sparsity") { Description = "sparsegpt: fraction of weights set to zero.", DefaultValueFactory = _ => d.Sparsity };
        var noActOrder = new Option<bool>("--no-act-order") { Description = "gptq: quantize columns in stored order instead of by decreasing Hessian diagonal." };
        var layerPass = new Option<bool>("--no-true-sequential") { Description = "Calibrate all linear maps of a layer from one pass (faster) instead of one map at a time." };
        var damp = new Option<double>("--damp") { Description = "Hessian damping, a fraction of its mean diagonal.", DefaultValueFactory = _ => d.Damping };
        var calibText = new Option<FileInfo?>("--calib-text") { Description = "UTF-8 text the calibration sequences are drawn from (gptq, sparsegpt)." };
        var samples = new Option<int>("--calib-samples") { Description = "Calibration sequences.", DefaultValueFactory = _ => d.CalibrationSamples };
        var length = new Option<int>("--calib-seq-len") { Description = "Tokens per calibration sequence (capped by the model's context).", DefaultValueFactory = _ => d.CalibrationLength };
        var seed = new Option<int>("--seed") { Description = "Seed of the calibration windows.", DefaultValueFactory = _ => d.Seed };
        var outDType = new Option<string>("--out-dtype") { Description = "fp32 (the compressed values exactly), bf16 or fp16.", DefaultValueFactory = _ => "fp32" };
        outDType.AcceptOnlyFromAmong("fp32", "bf16", "fp16");
        var output = new Option<string>("--output", "-o") { Description = "New model folder to write (must not exist or be empty).", Required = true };
        var command = new Command("compress",
            "Compress a model's decoder layers with GPTQ, SparseGPT or round-to-nearest; writes a dense model folder (dequantized weights) that Tern and transformers load.")
        {
            method, bits, groupSize, sparsity, noActOrder, layerPass, damp, calibText, samples, length, seed, outDType, output,
        };
        common.AddTo(command);
        command.SetAction((r, cancellation) =>
        {
            var m = r.GetValue(method) switch { "rtn" => CompressionMethod.Rtn, "sparsegpt" => CompressionMethod.SparseGpt, _ => CompressionMethod.Gptq };
            var options = new CompressionOptions
            {
                Method = m,
                Bits = r.GetValue(bits) ?? (m == CompressionMethod.SparseGpt ? 0 : 4),
                GroupSize = r.GetValue(groupSize),
                Sparsity = r.GetValue(sparsity),
                ActOrder = !r.GetValue(noActOrder),
                TrueSequential = !r.GetValue(layerPass),
                Damping = r.GetValue(damp),
                CalibrationSamples = r.GetValue(samples),
                CalibrationLength = r.GetValue(length),
                Seed = r.GetValue(seed),
            };
            var file = r.GetValue(calibText);
            if (m != CompressionMethod.Rtn && file is null)
                throw new UsageException($"--method {r.GetValue(method)} calibrates on text: pass --calib-text FILE (e.g. the training corpus).");
            string destination = r.GetValue(output)!;
            if (Directory.Exists(destination) && Directory.EnumerateFileSystemEntries(destination).Any())
                throw new UsageException($"--output: '{Path.GetFullPath(destination)}' exists and is not empty; choose a new folder.");
            var (folder, load) = common.LoadOptions(r);
            var tokenizer = Tokenization.TernTokenizer.Load(folder);
            IReadOnlyList<int> calibration = file is null ? Array.Empty<int>() : tokenizer.Encode(TextFiles.Read(file.FullName, "--calib-text"), addSpecialTokens: false);
            using var model = CausalLanguageModel.Load(folder, load with { Trainable = true });
            Console.Error.WriteLine($"{options.Name}: {model.Info.Layers} layers, {(m == CompressionMethod.Rtn ? "no calibration" : $"{options.CalibrationSamples} calibration sequences of {Math.Min(options.CalibrationLength, model.Info.MaxPositions)} tokens")}");
            var report = ModelCompressor.Run(model, calibration, options, new SyncProgress<string>(line => Console.Error.WriteLine("  " + line)), cancellation);
            ModelCompressor.Save(model, folder, destination, report, ComputeOptions.ParseDType(r.GetValue(outDType)!));
            Console.WriteLine($"{options.Name}: {report.Tensors.Count} weight tensors compressed, mean relative error {report.Tensors.Average(t => t.RelativeError):F4}, " +
                $"{report.Zeros:P1} zeros ({report.Seconds:F1} s) → {Path.GetFullPath(destination)} (dense weights, {r.GetValue(outDType)})");
            return Task.FromResult(0);
        });
        return command;
    }
}
