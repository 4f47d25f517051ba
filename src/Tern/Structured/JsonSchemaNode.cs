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

/// <summary>A string of <see cref="Min"/> to <see cref="Max"/> characters (Unicode code points, as JSON schema counts them;
/// an escape is one).</summary>
internal sealed class StringNode : SchemaNode
{
    /// <summary>Any string.</summary>
    public static readonly StringNode Instance = new(0, int.MaxValue);

    public StringNode(int min, int max)
    {
        Min = min;
        Max = max;
        MinLength = 2 + min; // the quotes and a byte per character at least
    }

    public int Min { get; }
    public int Max { get; }

    /// <summary>Where a string frame stops counting characters: past it, counts behave alike (0 for any string, whose frames
    /// then never change inside the text, so masks are shared).</summary>
    public int CountCap => Max < int.MaxValue ? Max : Min;
}

/// <summary>A number; <see cref="Integer"/> allows no fraction or exponent. An integer may have inclusive bounds
/// <see cref="Lo"/>/<see cref="Hi"/> (null: none; within ±<see cref="BoundLimit"/>), written digit by digit by
/// <see cref="IntegerFrame"/>.</summary>
internal sealed class NumberNode : SchemaNode
{
    /// <summary>Largest magnitude of a bound.</summary>
    public const long BoundLimit = 1_000_000_000_000_000_000;

    public NumberNode(bool integer, long? lo = null, long? hi = null)
    {
        Integer = integer;
        Lo = lo;
        Hi = hi;
        MinLength = Bounded ? Math.Min(Shortest(false), Shortest(true)) : 1;
    }

    public bool Integer { get; }
    public long? Lo { get; }
    public long? Hi { get; }
    public bool Bounded => Lo is not null || Hi is not null;

    /// <summary>The magnitudes a number of this sign may have, [Min, Max] (Max null: unbounded); Min > Max when none.</summary>
    public (long Min, long? Max) Magnitudes(bool negative) => negative
        ? (Math.Max(-(Hi ?? 0), 0), Lo is { } lo ? -lo : null)
        : (Math.Max(Lo ?? 0, 0), Hi);

    /// <summary>Bytes of the shortest number of this sign in the bounds (int.MaxValue: none).</summary>
    int Shortest(bool negative)
    {
        var (min, max) = Magnitudes(negative);
        return max is { } m && m < min ? int.MaxValue : (negative ? 1 : 0) + min.ToString(System.Globalization.CultureInfo.InvariantCulture).Length;
    }
}

/// <summary>A bound on a magnitude: its value and whether the value itself is excluded.</summary>
internal readonly record struct Bound(decimal Value, bool Exclusive);

/// <summary>A number (fractions allowed) between bounds <see cref="Low"/>/<see cref="High"/> (null: none), each inclusive or
/// exclusive, within ±<see cref="Limit"/>. Its values are written <c>-?int(.decimals)?</c> with at most
/// <see cref="MaxIntDigits"/> integer digits and <see cref="MaxFraction"/> decimals, no exponent (a subset of JSON's
/// numbers, all in the bounds), by <see cref="BoundedNumberFrame"/>.</summary>
internal sealed class BoundedNumberNode : SchemaNode
{
    public const decimal Limit = 1_000_000_000_000m;
    public const int MaxIntDigits = 13, MaxFraction = 12;

    public BoundedNumberNode(Bound? low, Bound? high)
    {
        Low = low;
        High = high;
        int positive = BoundedNumberFrame.Start(this, false).Remaining, negative = BoundedNumberFrame.Start(this, true).Remaining;
        MinLength = Math.Min(positive, negative == int.MaxValue ? int.MaxValue : 1 + negative);
    }

    public Bound? Low { get; }
    public Bound? High { get; }

    /// <summary>The magnitudes a number of this sign may have: from <c>Min</c>, up to <c>Max</c> (null: unbounded).</summary>
    public (Bound Min, Bound? Max) Magnitudes(bool negative) => negative
        ? (High is { } h && h.Value <= 0 ? new Bound(-h.Value, h.Exclusive) : new Bound(0, false), Low is { } l ? new Bound(-l.Value, l.Exclusive) : null)
        : (Low is { } lo && lo.Value >= 0 ? lo : new Bound(0, false), High);
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
/// properties, required, additionalProperties, items, minItems, maxItems, minLength, maxLength, minimum, maximum,
/// exclusiveMinimum and exclusiveMaximum, enum, const, anyOf, oneOf, $ref into $defs or definitions, type lists,
/// annotations) into <see cref="SchemaNode"/>s; any other keyword is refused naming it, as are bounds that no value meets.
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
            if (Bounds.FirstOrDefault(k => s.TryGetProperty(k, out _)) is { } bound
                && (!s.TryGetProperty("type", out _) || NotBesideBounds.Any(k => s.TryGetProperty(k, out _))))
                throw new UnsupportedSchemaException($"{bound} at {at} needs a \"type\" beside it (and no $ref, const, enum, anyOf or oneOf): " +
                    "bounds apply to the values of that type.", bound);
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

        /// <summary>The keywords that bound a string's length or a number's value.</summary>
        static readonly string[] Bounds = { "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum" };

        /// <summary>Keywords whose schema the compiler takes without its type, so that bounds beside them would go unenforced.</summary>
        static readonly string[] NotBesideBounds = { "$ref", "const", "enum", "anyOf", "oneOf" };

        static readonly string[] Supported =
        {
            "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength",
            "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const", "anyOf", "oneOf", "$ref",
        };

        SchemaNode Typed(string type, JsonElement s, string at) => type switch
        {
            "object" => Object(s, at),
            "array" => Array(s, at),
            "string" => String(s, at),
            "number" => Bounds[2..].Any(k => s.TryGetProperty(k, out _)) ? Number(s, at) : new NumberNode(false),
            "integer" => Integer(s, at),
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

        static SchemaNode String(JsonElement s, string at)
        {
            int min = Count(s, "minLength", at) ?? 0, max = Count(s, "maxLength", at) ?? int.MaxValue;
            if (min > max) throw new UnsupportedSchemaException($"minLength {min} is more than maxLength {max} at {at}: no string has such a length.", "minLength");
            return min == 0 && max == int.MaxValue ? StringNode.Instance : new StringNode(min, max);
        }

        /// <summary>An integer with its bounds as inclusive integers: minimum 1.5 is 2, exclusiveMinimum 3 is 4 (draft 4's
        /// boolean exclusiveMinimum/exclusiveMaximum make minimum/maximum exclusive).</summary>
        static SchemaNode Integer(JsonElement s, string at)
        {
            bool exclusiveLow = s.TryGetProperty("exclusiveMinimum", out var el) && el.ValueKind == JsonValueKind.True;
            bool exclusiveHigh = s.TryGetProperty("exclusiveMaximum", out var eh) && eh.ValueKind == JsonValueKind.True;
            long? lo = Max(Bound(s, "minimum", at, exclusiveLow ? x => decimal.Floor(x) + 1 : decimal.Ceiling),
                Bound(s, "exclusiveMinimum", at, x => decimal.Floor(x) + 1));
            long? hi = Min(Bound(s, "maximum", at, exclusiveHigh ? x => decimal.Ceiling(x) - 1 : decimal.Floor),
                Bound(s, "exclusiveMaximum", at, x => decimal.Ceiling(x) - 1));
            if (lo > hi)
            {
                string keyword = s.TryGetProperty("minimum", out _) ? "minimum" : "exclusiveMinimum";
                throw new UnsupportedSchemaException($"{keyword} at {at} is above the maximum: no integer lies in [{lo}, {hi}].", keyword);
            }
            return new NumberNode(true, lo, hi);
        }

        /// <summary>A number with bounds: the tighter of minimum and exclusiveMinimum (and of maximum and exclusiveMaximum),
        /// exclusive when both are equal; draft 4's boolean exclusiveMinimum/exclusiveMaximum make minimum/maximum exclusive.</summary>
        static SchemaNode Number(JsonElement s, string at)
        {
            bool exclusiveLow = s.TryGetProperty("exclusiveMinimum", out var el) && el.ValueKind == JsonValueKind.True;
            bool exclusiveHigh = s.TryGetProperty("exclusiveMaximum", out var eh) && eh.ValueKind == JsonValueKind.True;
            Bound? Tighter(Bound? a, Bound? b, int sign) => a is null ? b : b is null ? a
                : a.Value.Value == b.Value.Value ? new Bound(a.Value.Value, a.Value.Exclusive || b.Value.Exclusive)
                : sign * a.Value.Value > sign * b.Value.Value ? a : b;
            var low = Tighter(Decimal(s, "minimum", at) is { } min ? new Bound(min, exclusiveLow) : null,
                Decimal(s, "exclusiveMinimum", at) is { } emin ? new Bound(emin, true) : null, 1);
            var high = Tighter(Decimal(s, "maximum", at) is { } max ? new Bound(max, exclusiveHigh) : null,
                Decimal(s, "exclusiveMaximum", at) is { } emax ? new Bound(emax, true) : null, -1);
            var node = new BoundedNumberNode(low, high);
            if (node.MinLength == int.MaxValue)
            {
                string keyword = s.TryGetProperty("minimum", out _) ? "minimum" : "exclusiveMinimum";
                throw new UnsupportedSchemaException($"{keyword} at {at}: no number with at most {BoundedNumberNode.MaxFraction} decimals lies within the bounds.", keyword);
            }
            return node;
        }

        /// <summary>A numeric bound of a number, or null when absent (or a draft 4 boolean).</summary>
        static decimal? Decimal(JsonElement s, string keyword, string at)
        {
            if (!s.TryGetProperty(keyword, out var v) || v.ValueKind is JsonValueKind.True or JsonValueKind.False) return null;
            if (v.ValueKind != JsonValueKind.Number) throw new UnsupportedSchemaException($"{keyword} at {at} must be a number.", keyword);
            if (!v.TryGetDecimal(out decimal x) || Math.Abs(x) > BoundedNumberNode.Limit)
                throw new UnsupportedSchemaException($"{keyword} at {at} is beyond ±10^12, the largest bound of a number supported.", keyword);
            return x;
        }

        static long? Max(long? a, long? b) => a is null ? b : b is null ? a : Math.Max(a.Value, b.Value);
        static long? Min(long? a, long? b) => a is null ? b : b is null ? a : Math.Min(a.Value, b.Value);

        /// <summary>A numeric bound as an inclusive integer (<paramref name="round"/>), or null when absent (or a draft 4 boolean).</summary>
        static long? Bound(JsonElement s, string keyword, string at, Func<decimal, decimal> round)
        {
            if (!s.TryGetProperty(keyword, out var v) || v.ValueKind is JsonValueKind.True or JsonValueKind.False) return null;
            if (v.ValueKind != JsonValueKind.Number) throw new UnsupportedSchemaException($"{keyword} at {at} must be a number.", keyword);
            decimal r = v.TryGetDecimal(out decimal x) && Math.Abs(x) <= NumberNode.BoundLimit ? round(x) : decimal.MaxValue;
            if (Math.Abs(r) > NumberNode.BoundLimit)
                throw new UnsupportedSchemaException($"{keyword} at {at} is beyond ±10^18, the largest integer bound supported.", keyword);
            return (long)r;
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
