using System.CommandLine;
using System.Diagnostics;
using System.Text;
using Tern.Tokenization;

namespace Tern.Cli.Commands;

/// <summary><c>tern tokenizer train</c>: trains a byte-level BPE tokenizer and writes it as a Hugging Face folder.</summary>
internal static class TokenizerCommand
{
    public static Command Create()
    {
        var defaults = new BpeTrainerOptions();
        var inputs = new Option<string[]>("--input", "-i") { Description = "UTF-8 text files to train on (repeatable).", Required = true, AllowMultipleArgumentsPerToken = true };
        var vocabSize = new Option<int>("--vocab-size", "-v") { Description = "Vocabulary size, the 256 byte tokens and special tokens included.", DefaultValueFactory = _ => defaults.VocabSize };
        var output = new Option<string>("--output", "-o") { Description = "Folder to write tokenizer.json and tokenizer_config.json to.", Required = true };
        var specials = new Option<string[]>("--special") { Description = "Special tokens (repeatable; first ids in order).", DefaultValueFactory = _ => defaults.SpecialTokens.ToArray() };
        var bos = new Option<string?>("--bos") { Description = "Beginning-of-sequence token ('' for none).", DefaultValueFactory = _ => defaults.BosToken };
        var eos = new Option<string?>("--eos") { Description = "End-of-sequence token ('' for none).", DefaultValueFactory = _ => defaults.EosToken };
        var pad = new Option<string?>("--pad") { Description = "Padding token (default none)." };
        var minFrequency = new Option<int>("--min-frequency") { Description = "Smallest pair count that is still merged.", DefaultValueFactory = _ => defaults.MinFrequency };
        var maxLength = new Option<int>("--model-max-length") { Description = "model_max_length written to tokenizer_config.json.", DefaultValueFactory = _ => defaults.ModelMaxLength };
        var evaluate = new Option<string?>("--eval") { Description = "After training, report bytes per token on this text file." };
        var train = new Command("train", "Train a byte-level BPE tokenizer (GPT-2 style) on text files; writes an HF tokenizer folder.")
            { inputs, vocabSize, output, specials, bos, eos, pad, minFrequency, maxLength, evaluate };
        train.SetAction(r => Train(r.GetValue(inputs)!, r.GetValue(output)!, r.GetValue(evaluate), new BpeTrainerOptions
        {
            VocabSize = r.GetValue(vocabSize),
            SpecialTokens = r.GetValue(specials)!,
            BosToken = NullIfEmpty(r.GetValue(bos)),
            EosToken = NullIfEmpty(r.GetValue(eos)),
            PadToken = NullIfEmpty(r.GetValue(pad)),
            MinFrequency = r.GetValue(minFrequency),
            ModelMaxLength = r.GetValue(maxLength),
        }));
        var tokenizerDir = new Option<string>("--tokenizer", "-t") { Description = "Folder with the tokenizer (tokenizer.json, ...).", Required = true };
        var text = new Option<string>("--input", "-i") { Description = "UTF-8 text file to encode.", Required = true };
        var tokens = new Option<string>("--output", "-o") { Description = "Binary token file to write.", Required = true };
        var format = new Option<string>("--format") { Description = "u16 (vocabularies up to 65,536) or i32.", DefaultValueFactory = _ => "u16" };
        format.AcceptOnlyFromAmong("u16", "i32");
        var encode = new Command("encode", "Encode a text file into the binary token file `tern train` reads.") { tokenizerDir, text, tokens, format };
        encode.SetAction(r => Encode(r.GetValue(tokenizerDir)!, r.GetValue(text)!, r.GetValue(tokens)!,
            r.GetValue(format) == "i32" ? Tern.Training.TokenFileFormat.Int32 : Tern.Training.TokenFileFormat.UInt16));
        return new Command("tokenizer", "Tokenizer tools.") { train, encode };
    }

    static string? NullIfEmpty(string? s) => string.IsNullOrEmpty(s) ? null : s;

    static int Encode(string tokenizerDir, string input, string output, Tern.Training.TokenFileFormat format)
    {
        string content = TextFiles.Read(input, "--input");
        var tokenizer = TernTokenizer.Load(tokenizerDir);
        var clock = Stopwatch.StartNew();
        var progress = new ConsoleProgress("encoding");
        int[] ids = Tern.Training.TokenFile.Encode(tokenizer, content, progress: progress);
        Tern.Training.TokenFile.Write(output, ids, format);
        Console.Error.WriteLine();
        Console.WriteLine($"wrote {output}: {ids.Length:N0} tokens from {Encoding.UTF8.GetByteCount(content):N0} bytes " +
                          $"({Encoding.UTF8.GetByteCount(content) / (double)Math.Max(1, ids.Length):F2} bytes/token) in {clock.Elapsed.TotalSeconds:F1} s");
        return 0;
    }

    static int Train(string[] inputs, string output, string? evaluate, BpeTrainerOptions options)
    {
        string? evaluation = evaluate is null ? null : TextFiles.Read(evaluate, "--eval");
        var clock = Stopwatch.StartNew();
        string lastLine = "";
        var progress = new Progress<BpeTrainingProgress>(p =>
        {
            string line = p.Stage == "counting" ? $"counting  {p.Done * 100 / Math.Max(1, p.Total),3}%" : $"merging   {p.Done}/{p.Total}";
            if (line == lastLine) return;
            lastLine = line;
            Console.Error.Write($"\r{line}   ");
        });
        // Each input read as strict UTF-8 first (TextFiles), so that a binary file is refused by name before anything is written.
        var trainer = BpeTrainer.Create(options);
        foreach (string input in inputs) trainer.AddText(TextFiles.Read(input, "--input"), progress);
        var result = trainer.Train(output, progress);
        Console.Error.WriteLine();
        Console.WriteLine($"wrote {result.Directory}: vocabulary {result.VocabSize} ({result.Merges} merges) from {result.Words:N0} words " +
                          $"({result.UniqueWords:N0} distinct) in {clock.Elapsed.TotalSeconds:F1} s (merging {result.Elapsed.TotalSeconds:F1} s)");
        if (options.VocabSize > result.VocabSize)
            Console.WriteLine($"note: the text ran out of pairs occurring {options.MinFrequency}+ times before {options.VocabSize} entries");
        if (evaluation is not null)
        {
            var tokenizer = TernTokenizer.Load(result.Directory);
            string text = evaluation;
            var evalClock = Stopwatch.StartNew();
            int tokens = tokenizer.Encode(text, addSpecialTokens: false).Count;
            long bytes = Encoding.UTF8.GetByteCount(text);
            Console.WriteLine($"{Path.GetFileName(evaluate!)}: {bytes:N0} bytes -> {tokens:N0} tokens, {bytes / (double)Math.Max(1, tokens):F3} bytes/token " +
                              $"(encoded in {evalClock.Elapsed.TotalSeconds:F1} s)");
        }
        return 0;
    }
}
