using System.Text.Json.Nodes;

namespace Tern.Tests.Structured;

/// <summary>JSON schemas of the subset constrained decoding supports, generated from a seed: nested objects (required and
/// optional members, additionalProperties false or open), arrays with item counts, strings with length bounds, enums, const,
/// numbers and integers (with bounds), booleans, null, anyOf, $defs/$ref.</summary>
internal static class JsonSchemas
{
    static readonly string[] Names = { "name", "age", "tags", "id", "kind", "value", "items", "ok", "score", "meta", "city", "unit" };

    /// <summary>The <paramref name="count"/> schemas of <paramref name="seed"/>, each with an object at the root.</summary>
    public static IReadOnlyList<JsonObject> Generate(int count, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(i => i % 10 == 9 ? WithDefs(random) : Object(random, 0)).ToArray();
    }

    static JsonObject Node(Random r, int depth) => (depth >= 3 ? r.Next(5) : r.Next(9)) switch
    {
        0 => String(r),
        1 => r.Next(3) == 0 ? Integer(r) : new JsonObject { ["type"] = r.Next(2) == 0 ? "number" : "integer" },
        2 => new JsonObject { ["type"] = r.Next(3) == 0 ? "null" : "boolean" },
        3 => new JsonObject { ["enum"] = new JsonArray(Enumerable.Range(0, r.Next(1, 4)).Select(i => (JsonNode)(r.Next(3) == 0 ? JsonValue.Create(i * 7 - 3) : JsonValue.Create(Names[r.Next(Names.Length)] + i))).ToArray()) },
        4 => new JsonObject { ["const"] = r.Next(2) == 0 ? "fixed" : 42 },
        5 or 6 => Object(r, depth + 1),
        7 => Array(r, depth + 1),
        _ => new JsonObject { ["anyOf"] = new JsonArray(Node(r, depth + 1), Node(r, depth + 1)) },
    };

    /// <summary>A string, with a length bound one time in two.</summary>
    static JsonObject String(Random r)
    {
        var schema = new JsonObject { ["type"] = "string" };
        int min = r.Next(4);
        if (r.Next(2) == 0) schema["minLength"] = min;
        if (r.Next(2) == 0) schema["maxLength"] = min + r.Next(3);
        return schema;
    }

    /// <summary>An integer or a number with bounds: inclusive or exclusive, one side or both, either sign.</summary>
    static JsonObject Integer(Random r)
    {
        var schema = new JsonObject { ["type"] = r.Next(2) == 0 ? "integer" : "number" };
        int low = r.Next(-2000, 2000), width = r.Next(0, r.Next(2) == 0 ? 10 : 5000);
        switch (r.Next(4))
        {
            case 0: schema["minimum"] = low; schema["maximum"] = low + width; break;
            case 1: schema["exclusiveMinimum"] = low - 1; schema["exclusiveMaximum"] = low + width + 1; break;
            case 2: schema["minimum"] = low; break;
            default: schema["maximum"] = low; break;
        }
        return schema;
    }

    static JsonObject Object(Random r, int depth)
    {
        var properties = new JsonObject();
        var required = new JsonArray();
        foreach (string name in Names.OrderBy(_ => r.Next()).Take(r.Next(1, 5)))
        {
            properties[name] = Node(r, depth);
            if (r.Next(3) > 0) required.Add(name);
        }
        var schema = new JsonObject { ["type"] = "object", ["properties"] = properties, ["required"] = required };
        if (r.Next(4) > 0) schema["additionalProperties"] = false;
        return schema;
    }

    static JsonObject Array(Random r, int depth)
    {
        var schema = new JsonObject { ["type"] = "array", ["items"] = Node(r, depth) };
        int min = r.Next(3);
        if (min > 0) schema["minItems"] = min;
        if (r.Next(2) == 0) schema["maxItems"] = min + r.Next(3);
        return schema;
    }

    /// <summary>A root that refers to a definition (as pydantic writes nested models).</summary>
    static JsonObject WithDefs(Random r) => new()
    {
        ["$defs"] = new JsonObject { ["Item"] = Object(r, 1) },
        ["type"] = "object",
        ["properties"] = new JsonObject
        {
            ["item"] = new JsonObject { ["$ref"] = "#/$defs/Item" },
            ["list"] = new JsonObject { ["type"] = "array", ["items"] = new JsonObject { ["$ref"] = "#/$defs/Item" }, ["maxItems"] = 2 },
        },
        ["required"] = new JsonArray("item", "list"),
        ["additionalProperties"] = false,
    };
}
