using System.CommandLine;
using System.Text.Json;
using Tern.Structured;
using Tern.Tokenization;

namespace Tern.Cli.Commands;

/// <summary><c>--json</c> and <c>--json-schema FILE</c>: constrained decoding to a JSON object or a document of a schema.</summary>
internal sealed class JsonFlags
{
    public Option<bool> Json { get; } = new("--json") { Description = "Constrain the output to a JSON object (OpenAI's json_object)." };
    public Option<FileInfo?> Schema { get; } = new("--json-schema") { Description = "Constrain the output to JSON valid under this JSON schema file (OpenAI's json_schema)." };

    public void AddTo(Command command)
    {
        command.Options.Add(Json);
        command.Options.Add(Schema);
    }

    /// <summary>The constraint the flags ask for, or null; a schema outside the supported subset is a usage error naming the keyword.</summary>
    public JsonConstraint? Read(ParseResult r, TernTokenizer tokenizer)
    {
        if (r.GetValue(Schema) is not { } file) return r.GetValue(Json) ? JsonConstraint.Object(tokenizer) : null;
        if (r.GetValue(Json)) throw new UsageException("--json and --json-schema exclude each other: a schema already asks for JSON.");
        try
        {
            using var schema = JsonDocument.Parse(TextFiles.Read(file.FullName, "--json-schema"));
            return JsonConstraint.ForSchema(schema.RootElement, tokenizer);
        }
        catch (JsonException e)
        {
            throw new UsageException($"--json-schema '{file.FullName}' is not JSON: {e.Message}");
        }
        catch (UnsupportedSchemaException e)
        {
            throw new UsageException($"--json-schema '{file.FullName}': {e.Message}");
        }
    }
}
