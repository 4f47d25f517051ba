using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Tern.Tokenization;

namespace Tern.Structured;

/// <summary>A function a model may call: its name and the JSON schema of its arguments (null: any object).</summary>
public sealed record ToolFunction(string Name, JsonElement? Parameters);

/// <summary>
/// Tool calls in a model's reply, in the common formats: Hermes/Qwen's <c>&lt;tool_call&gt;{"name": …, "arguments": …}&lt;/tool_call&gt;</c>
/// blocks, or a reply that is one JSON object <c>{"name": …, "parameters"|"arguments": …}</c> (Llama 3.1's JSON format, also what
/// a forced call produces); and the schema that forces a call (tool_choice "required" or a named function).
/// </summary>
public static partial class ToolCalls
{
    [GeneratedRegex(@"<tool_call>\s*(.*?)\s*</tool_call>", RegexOptions.Singleline)]
    private static partial Regex Block();

    /// <summary>The calls of <paramref name="reply"/> to functions named in <paramref name="functions"/>, and the reply's text
    /// outside them (null when nothing else is left). A block that is not a valid call of a known function stays text.</summary>
    public static (string? Content, IReadOnlyList<ChatToolCall> Calls) Parse(string reply, IReadOnlyCollection<ToolFunction> functions)
    {
        var calls = new List<ChatToolCall>();
        string rest = Block().Replace(reply, m =>
        {
            if (Call(m.Groups[1].Value, functions) is not { } call) return m.Value;
            calls.Add(call);
            return "";
        });
        if (calls.Count == 0 && Call(reply.Trim().Replace("<|python_tag|>", ""), functions) is { } whole)
        {
            calls.Add(whole);
            rest = "";
        }
        rest = rest.Trim();
        return (rest.Length == 0 && calls.Count > 0 ? null : calls.Count > 0 ? rest : reply, calls);
    }

    static ChatToolCall? Call(string json, IReadOnlyCollection<ToolFunction> functions)
    {
        try
        {
            if (JsonNode.Parse(json) is not JsonObject o || o["name"]?.GetValueKind() != JsonValueKind.String) return null;
            string name = o["name"]!.GetValue<string>();
            var arguments = o["arguments"] ?? o["parameters"];
            if (!functions.Any(f => f.Name == name) || arguments is not JsonObject) return null;
            return new ChatToolCall(name, arguments.ToJsonString());
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>The schema of one call to one of <paramref name="functions"/>: <c>{"name": NAME, "arguments": {…}}</c>, whose
    /// arguments follow the function's parameters; <paramref name="argumentsName"/> is the key the chat template shows the model
    /// (<see cref="ChatTemplate.ToolCallArguments"/>: Llama 3.1 writes "parameters").</summary>
    public static JsonElement Schema(IEnumerable<ToolFunction> functions, string argumentsName = "arguments")
    {
        var options = new JsonArray(functions.Select(f => (JsonNode)new JsonObject
        {
            ["type"] = "object",
            ["properties"] = new JsonObject
            {
                ["name"] = new JsonObject { ["const"] = f.Name },
                [argumentsName] = f.Parameters is { } p ? JsonNode.Parse(p.GetRawText()) : new JsonObject { ["type"] = "object" },
            },
            ["required"] = new JsonArray("name", argumentsName),
            ["additionalProperties"] = false,
        }).ToArray());
        return JsonDocument.Parse(new JsonObject { ["anyOf"] = options }.ToJsonString()).RootElement.Clone();
    }
}
