using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Tern.Structured;

/// <summary>A JSON schema keyword (or shape) Tern's constrained decoding does not support: <see cref="Keyword"/> names it,
/// the message says where it is.</summary>
public sealed class UnsupportedSchemaException(string message, string keyword) : ArgumentException(message)
{
    /// <summary>The keyword refused, e.g. <c>pattern</c>.</summary>
    public string Keyword { get; } = keyword;
}

/// <summary>
/// A node of a compiled JSON schema: what value may stand at a point of the document. Nodes are immutable and compared by
/// reference (the automaton's states hold them). <see cref="MinLength"/> is the fewest bytes a value of the node takes, which
/// lets a constrained sequence close its document within its token budget.
/// </summary>
internal abstract class SchemaNode
{
    public int MinLength { get; protected set; }

    /// <summary>Any JSON value (<c>{}</c>, json_object's values).</summary>
    public static readonly ChoiceNode Any = AnyValue();

    static ChoiceNode AnyValue()
    {
        var any = new ChoiceNode();
        var anyObject = new ObjectNode(Array.Empty<PropertyNode>(), 0, any).Resolve(); // its length does not depend on any's
        any.Set(new SchemaNode[] { anyObject, new ArrayNode(any, 0, int.MaxValue), StringNode.Instance, new NumberNode(false), LiteralNode.Of("true", "false", "null") });
        return any;
    }

    /// <summary>A JSON object (json_object).</summary>
    public static readonly ObjectNode AnyObject = (ObjectNode)Any.Options[0];
}

/// <summary>One of several nodes (anyOf, oneOf, a list of types).</summary>
internal sealed class ChoiceNode : SchemaNode
{
    public SchemaNode[] Options { get; private set; } = Array.Empty<SchemaNode>();

    public ChoiceNode() { }
    public ChoiceNode(SchemaNode[] options) => Set(options);

    public void Set(SchemaNode[] options)
    {
        Options = options;
        MinLength = options.Min(o => o.MinLength);
    }
}

/// <summary>A property of an object node: its JSON-encoded name between the quotes, and its value.</summary>
internal sealed record PropertyNode(string Name, byte[] Key, SchemaNode Value)
{
    /// <summary>Bytes of <c>"key"</c>.</summary>
    public int KeyLength => Key.Length + 2;
}

/// <summary>An object: known properties (at most 64, in any order, each once), the required ones, and the value other keys
/// may have (null: none allowed).</summary>
internal sealed class ObjectNode(PropertyNode[] properties, ulong required, SchemaNode? additional) : SchemaNode
{
    public PropertyNode[] Properties { get; } = properties;
    public ulong Required { get; } = required;
    public SchemaNode? Additional { get; } = additional;

    /// <summary>Sets <see cref="SchemaNode.MinLength"/> once the property nodes have theirs.</summary>
    public ObjectNode Resolve()
    {
        // "{", the required members with a comma between them, "}": CloseLength's count (a comma before each member, "}").
        MinLength = Required == 0 ? 2 : CloseLength(0);
        return this;
    }

    /// <summary>Fewest bytes from after a member (with <paramref name="seen"/> written) to the closing brace: a comma and a
    /// minimal member for every required one missing, then "}".</summary>
    public int CloseLength(ulong seen)
    {
        int n = 1;
        for (int i = 0; i < Properties.Length; i++)
            if ((Required & ~seen & (1UL << i)) != 0) n += 1 + Properties[i].KeyLength + 1 + Properties[i].Value.MinLength;
        return n;
    }
}

/// <summary>An array of <see cref="Items"/> with a count in [Min, Max].</summary>
internal sealed class ArrayNode : SchemaNode
{
    public ArrayNode(SchemaNode items, int min, int max)
    {
        Items = items;
        Min = min;
        Max = max;
        MinLength = min == 0 ? 2 : 2 + min * items.MinLength + (min - 1);
    }

    public SchemaNode Items { get; }
    public int Min { get; }
    public int Max { get; }
}

/// <summary>Any string.</summary>
internal sealed class StringNode : SchemaNode
{
    public static readonly StringNode Instance = new();
    StringNode() => MinLength = 2;
}

/// <summary>A number; <see cref="Integer"/> allows no fraction or exponent.</summary>
internal sealed class NumberNode : SchemaNode
{
    public NumberNode(bool integer)
    {
        Integer = integer;
        MinLength = 1;
    }

    public bool Integer { get; }
}

/// <summary>One of a fixed set of values (enum, const, boolean, null), each as its compact JSON bytes.</summary>
internal sealed class LiteralNode : SchemaNode
{
    public LiteralNode(byte[][] values)
    {
        Values = values;
        MinLength = values.Min(v => v.Length);
    }

    public byte[][] Values { get; }

    public static LiteralNode Of(params string[] json) => new(json.Select(Encoding.UTF8.GetBytes).ToArray());
}

/// <summary>
/// Compiles a JSON schema (the subset vLLM and llama.cpp users write: type object/array/string/number/integer/boolean/null,
/// properties, required, additionalProperties, items, minItems, maxItems, enum, const, anyOf, oneOf, $ref into $defs or
/// definitions, type lists, annotations) into <see cref="SchemaNode"/>s; any other keyword is refused naming it.
/// </summary>
internal static class JsonSchemaCompiler
{
    static readonly JsonWriterOptions Compact = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    static readonly HashSet<string> Annotations = new(StringComparer.Ordinal)
    {
        "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly",
        "$defs", "definitions", "strict",
    };

    /// <summary>The node of <paramref name="schema"/>.</summary>
    public static SchemaNode Compile(JsonElement schema) => new Context(schema).Node(schema, "#");

    /// <summary>The compact JSON bytes of a value, as a constrained document writes it.</summary>
    public static byte[] Encode(JsonElement value)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer, Compact)) value.WriteTo(writer);
        return buffer.ToArray();
    }

    sealed class Context(JsonElement root)
    {
        readonly Dictionary<string, SchemaNode> refs = new(StringComparer.Ordinal);
        readonly HashSet<string> resolving = new(StringComparer.Ordinal);

        public SchemaNode Node(JsonElement s, string at)
        {
            if (s.ValueKind == JsonValueKind.True) return SchemaNode.Any;
            if (s.ValueKind != JsonValueKind.Object) throw new UnsupportedSchemaException($"the schema at {at} must be an object or true.", "schema");
            foreach (var p in s.EnumerateObject())
                if (!Annotations.Contains(p.Name) && !Supported.Contains(p.Name))
                    throw new UnsupportedSchemaException($"the JSON schema keyword '{p.Name}' (at {at}) is not supported by constrained decoding; " +
                        $"supported: {string.Join(", ", Supported)}.", p.Name);
            if (s.TryGetProperty("$ref", out var reference)) return Ref(reference, at);
            if (s.TryGetProperty("const", out var constant)) return new LiteralNode(new[] { Encode(constant) });
            if (s.TryGetProperty("enum", out var values))
            {
                if (values.ValueKind != JsonValueKind.Array || values.GetArrayLength() == 0)
                    throw new UnsupportedSchemaException($"enum at {at} must be a non-empty array.", "enum");
                return new LiteralNode(values.EnumerateArray().Select(Encode).Distinct(new BytesComparer()).ToArray());
            }
            foreach (string keyword in new[] { "anyOf", "oneOf" })
                if (s.TryGetProperty(keyword, out var options))
                {
                    if (s.TryGetProperty("type", out _)) throw new UnsupportedSchemaException($"{keyword} at {at} beside 'type' is not supported: put the type in each option.", keyword);
                    if (options.ValueKind != JsonValueKind.Array || options.GetArrayLength() == 0)
                        throw new UnsupportedSchemaException($"{keyword} at {at} must be a non-empty array of schemas.", keyword);
                    return new ChoiceNode(options.EnumerateArray().Select((o, i) => Node(o, $"{at}/{keyword}/{i}")).ToArray());
                }
            if (!s.TryGetProperty("type", out var type)) return s.TryGetProperty("properties", out _) ? Typed("object", s, at) : SchemaNode.Any;
            if (type.ValueKind == JsonValueKind.String) return Typed(type.GetString()!, s, at);
            if (type.ValueKind == JsonValueKind.Array && type.GetArrayLength() > 0 && type.EnumerateArray().All(t => t.ValueKind == JsonValueKind.String))
                return new ChoiceNode(type.EnumerateArray().Select(t => Typed(t.GetString()!, s, at)).ToArray());
            throw new UnsupportedSchemaException($"type at {at} must be a type name or an array of them.", "type");
        }

        static readonly string[] Supported =
        {
            "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "$ref",
        };

        SchemaNode Typed(string type, JsonElement s, string at) => type switch
        {
            "object" => Object(s, at),
            "array" => Array(s, at),
            "string" => StringNode.Instance,
            "number" => new NumberNode(false),
            "integer" => new NumberNode(true),
            "boolean" => LiteralNode.Of("true", "false"),
            "null" => LiteralNode.Of("null"),
            _ => throw new UnsupportedSchemaException($"type '{type}' at {at} is not a JSON schema type.", "type"),
        };

        SchemaNode Object(JsonElement s, string at)
        {
            var properties = new List<PropertyNode>();
            if (s.TryGetProperty("properties", out var props))
            {
                if (props.ValueKind != JsonValueKind.Object) throw new UnsupportedSchemaException($"properties at {at} must be an object.", "properties");
                foreach (var p in props.EnumerateObject())
                {
                    byte[] quoted = Encode(JsonDocument.Parse(JsonSerializer.Serialize(p.Name)).RootElement);
                    properties.Add(new PropertyNode(p.Name, quoted[1..^1], Node(p.Value, $"{at}/properties/{p.Name}")));
                }
            }
            if (properties.Count > 64) throw new UnsupportedSchemaException($"the object at {at} has {properties.Count} properties; at most 64 are supported.", "properties");
            ulong required = 0;
            if (s.TryGetProperty("required", out var req))
            {
                if (req.ValueKind != JsonValueKind.Array) throw new UnsupportedSchemaException($"required at {at} must be an array of names.", "required");
                foreach (var name in req.EnumerateArray())
                {
                    int i = properties.FindIndex(p => p.Name == name.GetString());
                    if (i < 0) throw new UnsupportedSchemaException($"required at {at} names '{name}', which is not in properties.", "required");
                    required |= 1UL << i;
                }
            }
            SchemaNode? additional = SchemaNode.Any; // JSON schema's default
            if (s.TryGetProperty("additionalProperties", out var extra))
                additional = extra.ValueKind switch
                {
                    JsonValueKind.False => null,
                    JsonValueKind.True => SchemaNode.Any,
                    _ => Node(extra, $"{at}/additionalProperties"),
                };
            return new ObjectNode(properties.ToArray(), required, additional).Resolve();
        }

        SchemaNode Array(JsonElement s, string at)
        {
            var items = s.TryGetProperty("items", out var i) ? Node(i, $"{at}/items") : SchemaNode.Any;
            int min = Count(s, "minItems", at) ?? 0, max = Count(s, "maxItems", at) ?? int.MaxValue;
            if (min > max) throw new UnsupportedSchemaException($"minItems {min} is more than maxItems {max} at {at}.", "minItems");
            return new ArrayNode(items, min, max);
        }

        static int? Count(JsonElement s, string keyword, string at) => !s.TryGetProperty(keyword, out var v) ? null
            : v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n) && n >= 0 ? n
            : throw new UnsupportedSchemaException($"{keyword} at {at} must be a non-negative integer.", keyword);

        SchemaNode Ref(JsonElement reference, string at)
        {
            string path = reference.ValueKind == JsonValueKind.String ? reference.GetString()! : "";
            if (refs.TryGetValue(path, out var known)) return known;
            var parts = path.StartsWith("#/", StringComparison.Ordinal) ? path[2..].Split('/') : null;
            JsonElement target = root;
            if (parts is null || parts.Any(p => !(target.ValueKind == JsonValueKind.Object && target.TryGetProperty(p.Replace("~1", "/").Replace("~0", "~"), out target))))
                throw new UnsupportedSchemaException($"$ref '{path}' at {at} does not point into this schema (#/$defs/... or #/definitions/...).", "$ref");
            if (!resolving.Add(path)) throw new UnsupportedSchemaException($"$ref '{path}' at {at} is recursive; recursive schemas are not supported.", "$ref");
            var node = Node(target, path);
            resolving.Remove(path);
            return refs[path] = node;
        }
    }

    sealed class BytesComparer : IEqualityComparer<byte[]>
    {
        public bool Equals(byte[]? x, byte[]? y) => x.AsSpan().SequenceEqual(y);
        public int GetHashCode(byte[] b)
        {
            var h = new HashCode();
            h.AddBytes(b);
            return h.ToHashCode();
        }
    }
}
