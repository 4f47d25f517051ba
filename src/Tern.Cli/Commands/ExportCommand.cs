using System.CommandLine;
using Tern.Checkpoints;
using Tern.Runtime;

namespace Tern.Cli.Commands;

/// <summary><c>tern export</c>: rewrite a model folder in another dtype, as shards and/or with low-rank factors made dense (see
/// <see cref="CheckpointExport"/>), or write it as one GGUF file for llama.cpp (see <see cref="GgufExport"/>).</summary>
internal static class ExportCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "Hugging Face model folder to read.", Required = true };
        var output = new Option<string>("--output", "-o") { Description = "Folder to write (created if needed); with --format gguf, the .gguf file.", Required = true };
        var format = new Option<string>("--format") { Description = "safetensors (a Hugging Face folder) or gguf (one file for llama.cpp, LLamaSharp, Ollama; Llama models with SiLU).", DefaultValueFactory = _ => "safetensors" };
        format.AcceptOnlyFromAmong("safetensors", "gguf");
        var dtype = new Option<string?>("--dtype") { Description = "fp32, bf16 or fp16 for the floating-point tensors (default: as stored); gguf: fp32 (default), fp16 or q8_0." };
        dtype.AcceptOnlyFromAmong("fp32", "bf16", "fp16", "q8_0");
        var shard = new Option<string>("--max-shard-size") { Description = "Largest weight file, e.g. 15MB or 2GB; bigger models get shards + index.", DefaultValueFactory = _ => "5GB" };
        var dense = new Option<bool>("--dense") { Description = "Multiply low-rank (InRank) factors back into dense weights: an ordinary HF folder transformers loads." };
        var command = new Command("export", "Write a model folder in another dtype and/or split into safetensors shards with an index, or as a GGUF file.")
            { model, output, format, dtype, shard, dense };
        command.SetAction(r =>
        {
            if (r.GetValue(format) == "gguf") return Gguf(r.GetValue(model)!, r.GetValue(output)!, r.GetValue(dtype), r.GetValue(dense));
            if (r.GetValue(dtype) == "q8_0") throw new UsageException("--dtype q8_0 is for --format gguf.");
            long maxBytes;
            try { maxBytes = CheckpointExport.ParseSize(r.GetValue(shard)!); }
            catch (ArgumentException e) { throw new UsageException($"--max-shard-size: {e.Message}"); }
            var options = new ExportOptions
            {
                DType = r.GetValue(dtype) is { } d ? ComputeOptions.ParseDType(d) : null,
                MaxShardBytes = maxBytes,
                Dense = r.GetValue(dense),
                Progress = new ConsoleProgress("exporting"),
            };
            var written = CheckpointExport.Run(r.GetValue(model)!, r.GetValue(output)!, options);
            Console.Error.WriteLine();
            foreach (string file in written) Console.WriteLine($"{file}  {new FileInfo(file).Length / 1e6:F1} MB");
            return 0;
        });
        return command;
    }

    static int Gguf(string model, string output, string? dtype, bool dense)
    {
        if (dense) throw new UsageException("--dense is for safetensors folders: export --dense first, then --format gguf from that folder.");
        var type = dtype switch
        {
            null or "fp32" => GgufTensorType.F32,
            "fp16" => GgufTensorType.F16,
            "q8_0" => GgufTensorType.Q8_0,
            _ => throw new UsageException($"--dtype {dtype} is not written to GGUF (use fp32, fp16 or q8_0)."),
        };
        GgufExport.Run(model, output, new GgufExportOptions { Type = type });
        Console.WriteLine($"{output}  {new FileInfo(output).Length / 1e6:F1} MB");
        return 0;
    }
}
