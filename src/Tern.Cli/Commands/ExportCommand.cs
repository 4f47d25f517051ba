using System.CommandLine;
using Tern.Checkpoints;
using Tern.Runtime;

namespace Tern.Cli.Commands;

/// <summary><c>tern export</c>: rewrite a model folder in another dtype, as shards and/or with low-rank factors made dense (see <see cref="CheckpointExport"/>).</summary>
internal static class ExportCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "Hugging Face model folder to read.", Required = true };
        var output = new Option<string>("--output", "-o") { Description = "Folder to write (created if needed).", Required = true };
        var dtype = new Option<string?>("--dtype") { Description = "fp32, bf16 or fp16 for the floating-point tensors (default: as stored)." };
        dtype.AcceptOnlyFromAmong("fp32", "bf16", "fp16");
        var shard = new Option<string>("--max-shard-size") { Description = "Largest weight file, e.g. 15MB or 2GB; bigger models get shards + index.", DefaultValueFactory = _ => "5GB" };
        var dense = new Option<bool>("--dense") { Description = "Multiply low-rank (InRank) factors back into dense weights: an ordinary HF folder transformers loads." };
        var command = new Command("export", "Write a model folder in another dtype and/or split into safetensors shards with an index.")
            { model, output, dtype, shard, dense };
        command.SetAction(r =>
        {
            long maxBytes;
            try { maxBytes = CheckpointExport.ParseSize(r.GetValue(shard)!); }
            catch (ArgumentException e) { throw new UsageException($"--max-shard-size: {e.Message}"); }
            var options = new ExportOptions
            {
                DType = r.GetValue(dtype) is { } d ? ComputeOptions.ParseDType(d) : null,
                MaxShardBytes = maxBytes,
                Dense = r.GetValue(dense),
            };
            var written = CheckpointExport.Run(r.GetValue(model)!, r.GetValue(output)!, options);
            foreach (string file in written) Console.WriteLine($"{file}  {new FileInfo(file).Length / 1e6:F1} MB");
            return 0;
        });
        return command;
    }
}
