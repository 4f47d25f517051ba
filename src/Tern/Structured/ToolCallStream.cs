using Tern.Tokenization;

namespace Tern.Structured;

/// <summary>A piece of a streamed reply read for tool calls: text (<see cref="Content"/>), the start of call
/// <see cref="Index"/> (<see cref="Name"/>), or a piece of its arguments' JSON text (<see cref="Arguments"/>), as OpenAI's
/// <c>tool_calls</c> deltas stream them (the name first, then the arguments in pieces).</summary>
public sealed record ToolCallDelta(string? Content = null, int Index = -1, string? Name = null, string? Arguments = null);

/// <summary>
/// Reads tool calls out of a reply while it streams, in the formats <see cref="ToolCalls.Parse"/> reads whole: Hermes/Qwen's
/// <c>&lt;tool_call&gt;{"name": …, "arguments": …}&lt;/tool_call&gt;</c> blocks, and a reply that is one JSON call
/// <c>{"name": …, "arguments"|"parameters": …}</c> (Llama 3.1, a forced call). A call's name goes out once its header is
/// read (a known function), then its arguments as they come; text that may still become a call is held back. A call written
/// otherwise (its arguments before its name) is read whole when it ends, and a reply that starts as JSON but is no call of
/// this header is read whole at the end, as <see cref="ToolCalls.Parse"/> reads it.
/// </summary>
public sealed class ToolCallStream(IReadOnlyCollection<ToolFunction> functions)
{
    const string Open = "<tool_call>", Close = "</tool_call>", PythonTag = "<|python_tag|>";

    enum Mode { Start, Text, Header, Arguments, Tail, Closing, Block, Whole }

    Mode mode = Mode.Start;
    bool inBlock; // the call is inside <tool_call> … </tool_call> (else the reply is the call)
    string pending = "";
    string blank = ""; // blanks before a <tool_call> tag: dropped before a call, kept before a block that stays text
    readonly System.Text.StringBuilder reply = new(); // the whole reply, for Mode.Whole
    int depth;
    bool inString, escaped;

    /// <summary>The calls read so far (a call counts once its arguments are complete).</summary>
    public int Calls { get; private set; }

    /// <summary>The deltas the next piece of the reply completes.</summary>
    public IReadOnlyList<ToolCallDelta> Push(string text)
    {
        reply.Append(text);
        pending += text;
        var output = new List<ToolCallDelta>();
        while (Step(output, end: false)) { }
        return output;
    }

    /// <summary>The deltas of what was held back, at the end of the reply.</summary>
    public IReadOnlyList<ToolCallDelta> Finish()
    {
        var output = new List<ToolCallDelta>();
        while (Step(output, end: true)) { }
        if (mode == Mode.Whole)
        {
            var (content, calls) = ToolCalls.Parse(reply.ToString(), functions);
            if (content is not null) output.Add(new ToolCallDelta(content));
            foreach (var call in calls) Whole(call, output);
        }
        else if (pending.Length > 0 && mode is Mode.Start or Mode.Text or Mode.Block or Mode.Header)
        {
            // A call cut short stays text, as in a reply read whole; trailing blanks go once there are calls.
            string rest = mode is Mode.Block or Mode.Header && inBlock ? blank + Open + pending : pending;
            if (Calls == 0 || rest.Trim().Length > 0) output.Add(new ToolCallDelta(Calls > 0 ? rest.Trim() : rest));
        }
        pending = "";
        return output;
    }

    void Whole(ChatToolCall call, List<ToolCallDelta> output)
    {
        output.Add(new ToolCallDelta(Index: Calls, Name: call.Name));
        output.Add(new ToolCallDelta(Index: Calls++, Arguments: call.Arguments));
    }

    /// <summary>One step of the reader; false when it needs more text.</summary>
    bool Step(List<ToolCallDelta> output, bool end)
    {
        switch (mode)
        {
            case Mode.Start:
            {
                // The reply may be one JSON call: hold its start until the first character that is not blank says.
                string head = pending.TrimStart();
                if (head.StartsWith(PythonTag, StringComparison.Ordinal)) { pending = head[PythonTag.Length..]; head = pending.TrimStart(); }
                else if (head.Length < PythonTag.Length && PythonTag.StartsWith(head, StringComparison.Ordinal) && !end) return false;
                if (head.Length == 0) return false;
                mode = head[0] == '{' ? Mode.Header : Mode.Text;
                return true;
            }
            case Mode.Text:
            {
                int at = pending.IndexOf(Open, StringComparison.Ordinal);
                // Hold back what may start a tag, and blanks that would end the text before a call.
                int keep = at >= 0 ? at : end ? pending.Length : pending.Length - PartialTag(pending);
                string text = pending[..keep];
                string emitted = at >= 0 || !end || Calls > 0 ? text.TrimEnd() : text;
                if (emitted.Length > 0) output.Add(new ToolCallDelta(emitted));
                if (at < 0)
                {
                    pending = pending[emitted.Length..];
                    return false;
                }
                blank = text[emitted.Length..];
                pending = pending[(at + Open.Length)..];
                inBlock = true;
                mode = Mode.Header;
                return true;
            }
            case Mode.Header:
            {
                var (read, name) = Header(pending);
                if (read == 0 && !end) return false;
                if (read <= 0 || name is null || !functions.Any(f => f.Name == name))
                {
                    // Not a header this reader streams: the block (or the whole reply) is read whole when it ends.
                    mode = inBlock ? Mode.Block : Mode.Whole;
                    return !end || mode == Mode.Block;
                }
                output.Add(new ToolCallDelta(Index: Calls, Name: name));
                pending = pending[read..];
                (depth, inString, escaped) = (0, false, false);
                mode = Mode.Arguments;
                return true;
            }
            case Mode.Arguments:
            {
                int i = 0;
                for (; i < pending.Length && (i == 0 || depth > 0); i++) Scan(pending[i]);
                if (i > 0) output.Add(new ToolCallDelta(Index: Calls, Arguments: pending[..i]));
                pending = pending[i..];
                if (depth > 0 || i == 0) return false;
                Calls++;
                mode = Mode.Tail;
                return true;
            }
            case Mode.Tail:
            {
                // After the arguments: the call's closing brace, then in a block its closing tag.
                int brace = pending.IndexOf('}');
                if (brace < 0) return false;
                pending = pending[(brace + 1)..];
                mode = inBlock ? Mode.Closing : Mode.Text;
                return true;
            }
            case Mode.Closing:
            {
                int close = pending.IndexOf(Close, StringComparison.Ordinal);
                if (close < 0) return false;
                pending = pending[(close + Close.Length)..];
                mode = Mode.Text;
                return true;
            }
            case Mode.Block:
            {
                int close = pending.IndexOf(Close, StringComparison.Ordinal);
                if (close < 0) return false;
                string block = pending[..close];
                pending = pending[(close + Close.Length)..];
                var (_, calls) = ToolCalls.Parse(Open + block + Close, functions);
                if (calls.Count > 0) Whole(calls[0], output);
                else output.Add(new ToolCallDelta(blank + Open + block + Close));
                mode = Mode.Text;
                return true;
            }
            default:
                return false; // Mode.Whole: everything waits for the end
        }
    }

    void Scan(char c)
    {
        if (inString)
        {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') inString = false;
        }
        else if (c == '"') inString = true;
        else if (c is '{' or '[') depth++;
        else if (c is '}' or ']') depth--;
    }

    /// <summary>Characters at the end of <paramref name="text"/> that may begin <c>&lt;tool_call&gt;</c>.</summary>
    static int PartialTag(string text)
    {
        for (int n = Math.Min(Open.Length - 1, text.Length); n > 0; n--)
            if (Open.StartsWith(text[^n..], StringComparison.Ordinal)) return n;
        return 0;
    }

    /// <summary>Reads <c>{"name": "NAME", "arguments": </c> (or <c>"parameters"</c>) at the start of <paramref name="s"/>:
    /// the characters read and the name (arguments follow); 0 when more text is needed; -1 when it is not such a header.</summary>
    static (int Read, string? Name) Header(string s)
    {
        int i = 0;
        bool Blank() { while (i < s.Length && char.IsWhiteSpace(s[i])) i++; return i < s.Length; }
        int Literal(string word) // 1 read, 0 more needed, -1 no
        {
            for (int k = 0; k < word.Length; k++, i++)
            {
                if (i >= s.Length) return 0;
                if (s[i] != word[k]) return -1;
            }
            return 1;
        }
        string? Str() // a JSON string's text; null when more is needed
        {
            var sb = new System.Text.StringBuilder();
            for (i++; i < s.Length; i++)
            {
                if (s[i] == '"') { i++; return sb.ToString(); }
                if (s[i] == '\\') return null; // an escaped name or key: read the call whole instead
                sb.Append(s[i]);
            }
            return null;
        }
        if (!Blank()) return (0, null);
        foreach (string part in new[] { "{", "\"name\"", ":" })
        {
            int r = Literal(part);
            if (r <= 0) return (r, null);
            if (!Blank()) return (0, null);
        }
        if (s[i] != '"') return (-1, null);
        int nameAt = i;
        string? name = Str();
        if (name is null) return (s.IndexOf('\\', nameAt) >= 0 ? -1 : 0, null);
        if (!Blank()) return (0, null);
        if (Literal(",") is var comma && comma <= 0) return (comma, null);
        if (!Blank()) return (0, null);
        if (s[i] != '"') return (-1, null);
        int keyAt = i;
        string? key = Str();
        if (key is null) return (s.IndexOf('\\', keyAt) >= 0 ? -1 : 0, null);
        if (key is not ("arguments" or "parameters")) return (-1, null);
        if (!Blank()) return (0, null);
        if (Literal(":") is var colon && colon <= 0) return (colon, null);
        if (!Blank()) return (0, null);
        return s[i] == '{' ? (i, name) : (-1, null);
    }
}
