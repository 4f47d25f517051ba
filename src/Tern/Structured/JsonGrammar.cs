namespace Tern.Structured;

/// <summary>
/// A byte-level pushdown automaton for JSON documents of a <see cref="SchemaNode"/>: a state is a set of stacks of frames
/// (a set because anyOf and an ending number or literal can go more than one way); each byte of UTF-8 text advances every
/// stack. Frames are immutable records, so states are values: they key the mask cache and are shared freely. Whitespace
/// between tokens is what pretty-printing writes, as llama.cpp's JSON grammars allow it: one space, or a newline and an indent
/// of at most <see cref="MaxIndent"/> spaces or tabs (a model cannot stall in whitespace); a stack also
/// knows the fewest bytes that complete its document (<see cref="Distance"/>), which lets a sequence finish within its budget.
/// </summary>
internal static class JsonGrammar
{
    /// <summary>Longest indent after a newline between two tokens of the document.</summary>
    public const int MaxIndent = 20;

    /// <summary>The whitespace state after <paramref name="b"/> (0: none yet, 1: one space, 2 + k: a newline and k indent
    /// bytes; -1: none allowed), or null when the byte cannot extend the run.</summary>
    static int? Whitespace(int ws, byte b) => (ws, b) switch
    {
        (0, (byte)' ') => 1,
        (0, (byte)'\n') => 2,
        ( >= 2, (byte)' ' or (byte)'\t') when ws - 2 < MaxIndent => ws + 1,
        _ => null,
    };

    /// <summary>The start: the document begins with its value (no whitespace before it, as llama.cpp's root).</summary>
    public static Stack Start(SchemaNode root) => new(new ValueFrame(root, -1), null);

    [ThreadStatic] static List<Stack>? scratch;
    static readonly List<Stack> None = new();

    /// <summary>The stacks <paramref name="b"/> leads to from <paramref name="states"/> (empty: the byte is not allowed). The
    /// lists are never changed once returned: a byte that changes nothing (most bytes inside a string) returns
    /// <paramref name="states"/> itself, and the mask walk then allocates nothing for it.</summary>
    public static List<Stack> Advance(List<Stack> states, byte b)
    {
        if (states.Count == 1)
        {
            var one = scratch ??= new List<Stack>(4);
            one.Clear();
            Step(states[0], b, one);
            return one.Count == 0 ? None : one.Count == 1 && ReferenceEquals(one[0], states[0]) ? states : new List<Stack>(one);
        }
        var next = new List<Stack>(states.Count);
        foreach (var s in states) Step(s, b, next);
        if (next.Count > 1)
        {
            var seen = new HashSet<Stack>();
            next.RemoveAll(s => !seen.Add(s));
        }
        return next;
    }

    /// <summary>True when the document may end here.</summary>
    public static bool CanEnd(Stack s) => s.Top is DoneFrame
        || s.Parent is null && s.Top is NumberFrame { Complete: true } or IntegerFrame { Complete: true } or BoundedNumberFrame { Complete: true }
            or LiteralFrame { Complete: true };

    /// <summary>Fewest bytes that complete the document of <paramref name="s"/>.</summary>
    public static int Distance(Stack s)
    {
        int n = 0;
        for (var f = s; f is not null; f = f.Parent) n += f.Top.Remaining;
        return n;
    }

    static bool IsWhitespace(byte b) => b is (byte)' ' or (byte)'\n' or (byte)'\t' or (byte)'\r';

    static void Step(Stack s, byte b, List<Stack> output)
    {
        switch (s.Top)
        {
            case ValueFrame v:
                if (IsWhitespace(b)) { if (Whitespace(v.Ws, b) is { } ws) output.Add(s.With(v with { Ws = ws })); }
                else StartValue(v.Node, s.Parent, b, output);
                break;
            case ObjectFrame o: StepObject(s, o, b, output); break;
            case ArrayFrame a: StepArray(s, a, b, output); break;
            case StringFrame str:
                if (str.Next(b) is { } after) output.Add(after.Closed ? Pop(s) : ReferenceEquals(after, str) ? s : s.With(after)); // most bytes change nothing
                break;
            case ScalarFrame scalar:
                // The byte may extend the value and, where the value may end here, also belong to what follows it.
                if (scalar.Next(b) is { } next) output.Add(ReferenceEquals(next, scalar) ? s : s.With(next));
                if (scalar.Complete) Feed(s.Parent, b, output);
                break;
        }
    }

    /// <summary>A frame that ends without a closing byte of its own passes <paramref name="b"/> to the frame below.</summary>
    static void Feed(Stack? parent, byte b, List<Stack> output)
    {
        if (parent is not null) Step(parent, b, output);
    }

    /// <summary>The frame below once the top one closed (the document is done when there is none).</summary>
    static Stack Pop(Stack s) => s.Parent ?? Stack.Done;

    static void StartValue(SchemaNode node, Stack? parent, byte b, List<Stack> output)
    {
        switch (node)
        {
            case ChoiceNode c:
                foreach (var option in c.Options) StartValue(option, parent, b, output);
                break;
            case ObjectNode o when b == '{': output.Add(new Stack(new ObjectFrame(o, 0, ObjectPhase.Open, 0, "", -1), parent)); break;
            case ArrayNode a when b == '[': output.Add(new Stack(new ArrayFrame(a, 0, ArrayPhase.Open, 0), parent)); break;
            case StringNode str when b == '"': output.Add(new Stack(StringFrame.Start(str), parent)); break;
            case BoundedNumberNode bounded:
                if (BoundedNumberFrame.Begin(bounded, b) is { } start) output.Add(new Stack(start, parent));
                break;
            case NumberNode { Bounded: true } n:
                if (IntegerFrame.Begin(n, b) is { } integer) output.Add(new Stack(integer, parent));
                break;
            case NumberNode n:
                if (NumberFrame.Begin(n.Integer, b) is { } number) output.Add(new Stack(number, parent));
                break;
            case LiteralNode l:
                if (new LiteralFrame(l, Array.Empty<byte>()).Next(b) is { } literal) output.Add(new Stack(literal, parent));
                break;
        }
    }

    static void StepObject(Stack s, ObjectFrame o, byte b, List<Stack> output)
    {
        var node = o.Node;
        bool blank = IsWhitespace(b);
        switch (o.Phase)
        {
            case ObjectPhase.Open or ObjectPhase.Comma or ObjectPhase.Colon or ObjectPhase.AfterValue when blank:
                if (Whitespace(o.Ws, b) is { } ws) output.Add(s.With(o with { Ws = ws }));
                break;
            case ObjectPhase.Open or ObjectPhase.Comma when b == '"':
                output.Add(s.With(o with { Phase = ObjectPhase.Key, Ws = 0, Key = "" }));
                break;
            case ObjectPhase.Open or ObjectPhase.AfterValue when b == '}' && (node.Required & ~o.Seen) == 0:
                output.Add(Pop(s));
                break;
            case ObjectPhase.AfterValue when b == ',' && o.CanAddMember:
                output.Add(s.With(o with { Phase = ObjectPhase.Comma, Ws = 0 }));
                break;
            case ObjectPhase.Key when b == '"':
                int known = o.KnownKey(o.Key);
                if (known >= 0 && (o.Seen & (1UL << known)) == 0)
                    output.Add(s.With(o with { Phase = ObjectPhase.Colon, Seen = o.Seen | (1UL << known), Member = known, Ws = 0 }));
                else if (known < 0 && node.Additional is not null)
                    output.Add(s.With(o with { Phase = ObjectPhase.Colon, Member = -1, Ws = 0 }));
                break;
            case ObjectPhase.Key:
                string key = o.Key + (char)b;
                if (o.AllowsKeyPrefix(key, b)) output.Add(s.With(o with { Key = key }));
                break;
            case ObjectPhase.Colon when b == ':':
                var value = o.Member >= 0 ? node.Properties[o.Member].Value : node.Additional!;
                output.Add(new Stack(new ValueFrame(value, 0), s.With(o with { Phase = ObjectPhase.AfterValue, Ws = 0, Key = "" })));
                break;
        }
    }

    static void StepArray(Stack s, ArrayFrame a, byte b, List<Stack> output)
    {
        var node = a.Node;
        if (IsWhitespace(b))
        {
            if (Whitespace(a.Ws, b) is { } ws) output.Add(s.With(a with { Ws = ws }));
            return;
        }
        switch (a.Phase)
        {
            case ArrayPhase.Open or ArrayPhase.AfterValue when b == ']' && a.Count >= node.Min:
                output.Add(Pop(s));
                break;
            case ArrayPhase.AfterValue when b == ',' && a.Count < node.Max:
                output.Add(s.With(a with { Phase = ArrayPhase.Comma, Ws = 0 }));
                break;
            case ArrayPhase.Open when node.Max > 0:
            case ArrayPhase.Comma:
                StartValue(node.Items, s.With(a with { Phase = ArrayPhase.AfterValue, Count = a.Count + 1, Ws = 0 }), b, output);
                break;
        }
    }
}

/// <summary>An immutable stack of frames (value equality; the hash is computed once).</summary>
internal sealed class Stack : IEquatable<Stack>
{
    readonly int hash;

    public Stack(Frame top, Stack? parent)
    {
        Top = top;
        Parent = parent;
        hash = HashCode.Combine(top, parent?.hash ?? 0);
    }

    public Frame Top { get; }
    public Stack? Parent { get; }

    /// <summary>The completed document.</summary>
    public static readonly Stack Done = new(new DoneFrame(), null);

    public Stack With(Frame top) => new(top, Parent);

    public bool Equals(Stack? other)
    {
        for (Stack? a = this, b = other; ; a = a.Parent, b = b.Parent)
        {
            if (ReferenceEquals(a, b)) return true;
            if (a is null || b is null || a.hash != b.hash || !a.Top.Equals(b.Top)) return false;
        }
    }

    public override bool Equals(object? obj) => obj is Stack s && Equals(s);
    public override int GetHashCode() => hash;
}

/// <summary>A frame of the automaton; <see cref="Remaining"/> is the fewest bytes that close it (its own part only).</summary>
internal abstract record Frame
{
    public abstract int Remaining { get; }
}

/// <summary>A value written byte by byte with no frames inside it (a number, a bounded number, a literal): a byte extends it
/// (<see cref="Next"/>: null when it cannot), and where it is <see cref="Complete"/> the next byte may belong to its parent.</summary>
internal abstract record ScalarFrame : Frame
{
    public abstract bool Complete { get; }

    public abstract ScalarFrame? Next(byte b);
}

/// <summary>After the document.</summary>
internal sealed record DoneFrame : Frame
{
    public override int Remaining => 0;
}

/// <summary>Where a value of <see cref="Node"/> starts (<see cref="Ws"/>: the whitespace before it, see JsonGrammar).</summary>
internal sealed record ValueFrame(SchemaNode Node, int Ws) : Frame
{
    public override int Remaining => Node.MinLength;
}

internal enum ObjectPhase { Open, Key, Colon, AfterValue, Comma }

/// <summary>Inside an object: the members written (<see cref="Seen"/>, by property index), the key being written (its bytes
/// as chars), the member whose value comes next (-1: an additional one).</summary>
internal sealed record ObjectFrame(ObjectNode Node, ulong Seen, ObjectPhase Phase, int Ws, string Key, int Member) : Frame
{
    /// <summary>The index of the property whose encoded name is <paramref name="key"/>, or -1.</summary>
    public int KnownKey(string key)
    {
        for (int i = 0; i < Node.Properties.Length; i++)
            if (Matches(Node.Properties[i].Key, key, whole: true)) return i;
        return -1;
    }

    static bool Matches(byte[] name, string key, bool whole)
    {
        if (key.Length > name.Length || whole && key.Length != name.Length) return false;
        for (int i = 0; i < key.Length; i++) if (name[i] != key[i]) return false;
        return true;
    }

    /// <summary>True when <paramref name="key"/> can still become a member not yet written: a prefix of an unseen property's
    /// name, or (with additional properties) plain printable ASCII.</summary>
    public bool AllowsKeyPrefix(string key, byte last)
    {
        for (int i = 0; i < Node.Properties.Length; i++)
            if ((Seen & (1UL << i)) == 0 && Matches(Node.Properties[i].Key, key, whole: false)) return true;
        return Node.Additional is not null && last is >= 0x20 and < 0x7F and not (byte)'\\';
    }

    /// <summary>True when another member may follow.</summary>
    public bool CanAddMember => Node.Additional is not null || System.Numerics.BitOperations.PopCount(Seen) < Node.Properties.Length;

    public override int Remaining => Phase switch
    {
        ObjectPhase.Open => Node.MinLength - 1,
        ObjectPhase.AfterValue => Node.CloseLength(Seen),
        ObjectPhase.Colon => 1 + (Member >= 0 ? Node.Properties[Member].Value : Node.Additional!).MinLength + Node.CloseLength(Seen),
        ObjectPhase.Comma => MemberLength(""),
        _ => MemberLength(Key),
    };

    /// <summary>Fewest bytes to finish a member whose key starts with <paramref name="prefix"/> (after its opening quote, or
    /// before it when in the comma phase) and close the object.</summary>
    int MemberLength(string prefix)
    {
        bool inKey = Phase == ObjectPhase.Key;
        int best = int.MaxValue;
        for (int i = 0; i < Node.Properties.Length; i++)
        {
            var p = Node.Properties[i];
            if ((Seen & (1UL << i)) != 0 || !Matches(p.Key, prefix, whole: false)) continue;
            int key = inKey ? p.Key.Length - prefix.Length + 1 : p.KeyLength; // the rest of the key and its closing quote
            best = Math.Min(best, key + 1 + p.Value.MinLength + Node.CloseLength(Seen | (1UL << i)));
        }
        if (Node.Additional is { } extra)
        {
            int key = inKey ? 1 : 2; // close the key; or an empty key
            best = Math.Min(best, key + 1 + extra.MinLength + Node.CloseLength(Seen));
        }
        return best;
    }
}

internal enum ArrayPhase { Open, AfterValue, Comma }

/// <summary>Inside an array of which <see cref="Count"/> items have started.</summary>
internal sealed record ArrayFrame(ArrayNode Node, int Count, ArrayPhase Phase, int Ws) : Frame
{
    public override int Remaining
    {
        get
        {
            int items = Node.Items.MinLength;
            int AfterValue(int count) => Math.Max(0, Node.Min - count) * (1 + items) + 1;
            return Phase switch
            {
                ArrayPhase.Open => Node.MinLength - 1,
                ArrayPhase.AfterValue => AfterValue(Count),
                _ => items + AfterValue(Count + 1),
            };
        }
    }
}

/// <summary>Inside a string of <see cref="Node"/>: after a backslash (<see cref="Escape"/> 1), in a \u escape (2–5: 4–1 hex
/// digits left), with UTF-8 continuation bytes owed; <see cref="Count"/> characters started (up to the node's
/// <see cref="StringNode.CountCap"/>); <see cref="Closed"/> once the closing quote came.</summary>
internal sealed record StringFrame(StringNode Node, int Escape, int Utf8Pending, int Count, bool Closed) : Frame
{
    /// <summary>After the opening quote.</summary>
    public static StringFrame Start(StringNode node) => new(node, 0, 0, 0, false);

    public override int Remaining => Escape switch
    {
        0 => Utf8Pending,
        1 => 1,
        _ => 6 - Escape,
    } + Math.Max(0, Node.Min - Count) + 1; // what the character started needs, a byte per character missing, the quote

    /// <summary>This frame with one more character started, or null when the string is at its maximum length.</summary>
    StringFrame? Character(int escape, int utf8Pending) =>
        Count >= Node.Max ? null : this with { Escape = escape, Utf8Pending = utf8Pending, Count = Math.Min(Count + 1, Node.CountCap) };

    /// <summary>The frame after <paramref name="b"/>, or null when the byte cannot come here. Lone surrogates (\uD800–\uDFFF)
    /// and control characters are refused: the text must be valid Unicode.</summary>
    public StringFrame? Next(byte b)
    {
        if (Escape == 1)
            return b switch
            {
                (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t' => this with { Escape = 0 },
                (byte)'u' => this with { Escape = 2 },
                _ => null,
            };
        if (Escape >= 2)
        {
            bool hex = b is >= (byte)'0' and <= (byte)'9' or >= (byte)'a' and <= (byte)'f' or >= (byte)'A' and <= (byte)'F';
            if (!hex || Escape == 2 && b is (byte)'d' or (byte)'D') return null;
            return this with { Escape = Escape == 5 ? 0 : Escape + 1 };
        }
        if (b >= 0x80)
        {
            if (b < 0xC0) return Utf8Pending > 0 ? this with { Utf8Pending = Utf8Pending - 1 } : null;
            if (Utf8Pending > 0) return null;
            return b switch
            {
                >= 0xC2 and <= 0xDF => Character(0, 1),
                >= 0xE0 and <= 0xEF => Character(0, 2),
                >= 0xF0 and <= 0xF4 => Character(0, 3),
                _ => null,
            };
        }
        if (Utf8Pending > 0 || b < 0x20) return null;
        return b switch
        {
            (byte)'"' => Count >= Node.Min ? this with { Closed = true } : null,
            (byte)'\\' => Character(1, 0),
            _ => Count < Node.CountCap ? Character(0, 0) : Count < Node.Max ? this : null, // past the cap a character changes nothing
        };
    }
}

internal enum NumberPhase { Minus, Zero, Int, Dot, Fraction, Exponent, ExponentSign, ExponentDigits }

/// <summary>Inside a number (JSON's grammar; an integer has no fraction or exponent).</summary>
internal sealed record NumberFrame(bool Integer, NumberPhase Phase) : ScalarFrame
{
    public static NumberFrame? Begin(bool integer, byte b) => b == '-' ? new(integer, NumberPhase.Minus) : new NumberFrame(integer, NumberPhase.Minus).Next(b);

    public override bool Complete => Phase is NumberPhase.Zero or NumberPhase.Int or NumberPhase.Fraction or NumberPhase.ExponentDigits;

    public override int Remaining => Complete ? 0 : 1;

    public override NumberFrame? Next(byte b)
    {
        bool digit = b is >= (byte)'0' and <= (byte)'9';
        NumberPhase? next = Phase switch
        {
            NumberPhase.Minus when b == '0' => NumberPhase.Zero,
            NumberPhase.Minus when digit => NumberPhase.Int,
            NumberPhase.Int when digit => NumberPhase.Int,
            NumberPhase.Zero or NumberPhase.Int when b == '.' && !Integer => NumberPhase.Dot,
            NumberPhase.Dot or NumberPhase.Fraction when digit => NumberPhase.Fraction,
            NumberPhase.Zero or NumberPhase.Int or NumberPhase.Fraction when (b == 'e' || b == 'E') && !Integer => NumberPhase.Exponent,
            NumberPhase.Exponent when b == '+' || b == '-' => NumberPhase.ExponentSign,
            NumberPhase.Exponent or NumberPhase.ExponentSign or NumberPhase.ExponentDigits when digit => NumberPhase.ExponentDigits,
            _ => null,
        };
        return next is not { } p ? null : p == Phase ? this : this with { Phase = p };
    }
}

/// <summary>Inside an integer with bounds (<see cref="NumberNode.Lo"/>, <see cref="NumberNode.Hi"/>): its sign and the
/// magnitude of its digits so far (<see cref="Started"/> once there is one). A digit is allowed only when some integer in the
/// bounds still starts with the digits; a magnitude past 10^18 (past every bound) is kept as 10^18 + 1, as all such
/// magnitudes are alike.</summary>
internal sealed record IntegerFrame(NumberNode Node, bool Negative, long Magnitude, bool Started) : ScalarFrame
{
    const long Beyond = NumberNode.BoundLimit + 1;

    public static IntegerFrame? Begin(NumberNode node, byte b)
    {
        if (b != '-') return new IntegerFrame(node, false, 0, false).Next(b);
        var minus = new IntegerFrame(node, true, 0, false);
        return minus.Reachable ? minus : null;
    }

    public override bool Complete => Started && ExtraDigits() == 0;

    public override int Remaining => ExtraDigits();

    public override IntegerFrame? Next(byte b)
    {
        if (b is < (byte)'0' or > (byte)'9' || Started && Magnitude == 0) return null; // no digit after a leading zero
        long magnitude = (long)Int128.Min((Int128)Magnitude * 10 + (b - '0'), Beyond);
        var next = this with { Magnitude = magnitude, Started = true };
        return next.Reachable ? next : null;
    }

    bool Reachable => ExtraDigits() < int.MaxValue;

    /// <summary>Fewest digits still to write for an integer in the bounds (0: this one is; int.MaxValue: none can be).</summary>
    int ExtraDigits()
    {
        var (min, max) = Node.Magnitudes(Negative);
        if (max is { } m && m < min) return int.MaxValue;
        if (!Started) return min.ToString(System.Globalization.CultureInfo.InvariantCulture).Length;
        if (Magnitude == 0) return min == 0 ? 0 : int.MaxValue; // "0" or "-0" takes no more digits
        // With k more digits the magnitude is in [m·10^k, m·10^k + 10^k - 1].
        Int128 low = Magnitude, span = 1;
        for (int k = 0; ; k++, low *= 10, span *= 10)
        {
            if (max is { } top && low > top) return int.MaxValue;
            if (low + span - 1 >= min) return k;
        }
    }
}

/// <summary>Inside a number with bounds (<see cref="BoundedNumberNode"/>): its sign, the value of its digits so far, the
/// integer digits written (0: none yet) and the decimals (-1: no dot yet; 0: a dot and no decimal yet). A byte is allowed only
/// when some number in the bounds still starts with the text.</summary>
internal sealed record BoundedNumberFrame(BoundedNumberNode Node, bool Negative, decimal Magnitude, int IntDigits, int Fraction) : ScalarFrame
{
    static readonly decimal[] Powers = Enumerable.Range(0, 2 * BoundedNumberNode.MaxIntDigits + 1).Select(e => Pow(e)).ToArray();
    static readonly decimal[] Steps = Enumerable.Range(0, BoundedNumberNode.MaxFraction + 1).Select(e => 1m / Pow(e)).ToArray();

    static decimal Pow(int e)
    {
        decimal p = 1;
        for (int i = 0; i < e; i++) p *= 10;
        return p;
    }

    /// <summary>Before the first digit, after the sign if <paramref name="negative"/>.</summary>
    public static BoundedNumberFrame Start(BoundedNumberNode node, bool negative) => new(node, negative, 0, 0, -1);

    public static BoundedNumberFrame? Begin(BoundedNumberNode node, byte b)
    {
        if (b != '-') return Start(node, false).Next(b);
        var minus = Start(node, true);
        return minus.Extra() < int.MaxValue ? minus : null;
    }

    public override bool Complete => IntDigits > 0 && Fraction != 0 && Extra() == 0;

    public override int Remaining => Extra();

    public override BoundedNumberFrame? Next(byte b)
    {
        BoundedNumberFrame next;
        if (b == '.')
        {
            if (IntDigits == 0 || Fraction >= 0) return null;
            next = this with { Fraction = 0 };
        }
        else if (b is >= (byte)'0' and <= (byte)'9')
        {
            int d = b - '0';
            if (Fraction >= 0)
            {
                if (Fraction == BoundedNumberNode.MaxFraction) return null;
                next = this with { Magnitude = Magnitude + d * Steps[Fraction + 1], Fraction = Fraction + 1 };
            }
            else
            {
                if (IntDigits > 0 && Magnitude == 0 || IntDigits == BoundedNumberNode.MaxIntDigits) return null; // no digit after a leading zero
                next = this with { Magnitude = Magnitude * 10 + d, IntDigits = IntDigits + 1 };
            }
        }
        else return null;
        return next.Extra() < int.MaxValue ? next : null;
    }

    /// <summary>Fewest bytes still to write for a number in the bounds (0: this one is; int.MaxValue: none can be).</summary>
    int Extra()
    {
        var (min, max) = Node.Magnitudes(Negative);
        if (Fraction >= 0)
        {
            // Decimals written: more of them refine the value within [m, m + 10^-f) (after a bare dot, [m, m + 1) with one at least).
            for (int fd = Math.Max(Fraction, 1); fd <= BoundedNumberNode.MaxFraction; fd++)
                if (Hits(Magnitude, Magnitude + Steps[Fraction], fd, min, max)) return fd - Fraction;
            return int.MaxValue;
        }
        // Integer digits: k more of them give [v·10^k, (v+1)·10^k), then perhaps a dot and fd decimals; from nothing, k digits
        // give [10^(k-1), 10^k) ([0, 10) for one).
        int best = int.MaxValue;
        int first = IntDigits == 0 ? 1 : 0, last = IntDigits == 0 ? BoundedNumberNode.MaxIntDigits : Magnitude == 0 ? 0 : BoundedNumberNode.MaxIntDigits - IntDigits;
        for (int k = first; k <= last && k < best; k++)
        {
            decimal from = IntDigits == 0 ? (k == 1 ? 0 : Powers[k - 1]) : Magnitude * Powers[k];
            decimal to = IntDigits == 0 ? Powers[k] : (Magnitude + 1) * Powers[k];
            if (max is { } top && from > top.Value) break;
            if (Hits(from, to, 0, min, max)) best = k;
            for (int fd = 1; fd <= BoundedNumberNode.MaxFraction && k + 1 + fd < best; fd++)
                if (Hits(from, to, fd, min, max)) best = k + 1 + fd;
        }
        return best;
    }

    /// <summary>True when a magnitude with at most <paramref name="decimals"/> decimals in [<paramref name="from"/>,
    /// <paramref name="to"/>) is within the bounds (<paramref name="from"/> has no more decimals than that).</summary>
    static bool Hits(decimal from, decimal to, int decimals, Bound min, Bound? max)
    {
        decimal step = Steps[decimals];
        decimal x = decimal.Ceiling(min.Value / step) * step;
        if (min.Exclusive && x == min.Value) x += step;
        x = Math.Max(from, x);
        return x < to && (max is not { } top || x < top.Value || !top.Exclusive && x == top.Value);
    }
}

/// <summary>Inside one of a literal node's values: the bytes written so far.</summary>
internal sealed record LiteralFrame(LiteralNode Node, byte[] Written) : ScalarFrame
{
    public override bool Complete => Node.Values.Any(v => v.AsSpan().SequenceEqual(Written));

    public override int Remaining => Node.Values.Where(v => v.AsSpan().StartsWith(Written)).Min(v => v.Length - Written.Length);

    public override LiteralFrame? Next(byte b)
    {
        byte[] longer = [.. Written, b];
        return Node.Values.Any(v => v.AsSpan().StartsWith(longer)) ? this with { Written = longer } : null;
    }

    // Written is compared by content (records compare arrays by reference).
    public bool Equals(LiteralFrame? other) => other is not null && ReferenceEquals(Node, other.Node) && Written.AsSpan().SequenceEqual(other.Written);

    public override int GetHashCode()
    {
        var h = new HashCode();
        h.Add(Node);
        h.AddBytes(Written);
        return h.ToHashCode();
    }
}
