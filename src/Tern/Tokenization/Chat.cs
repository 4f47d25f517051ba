using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Tern.Tokenization;

/// <summary>One chat turn: <paramref name="Role"/> is "system", "user", "assistant" or "tool" (a tool's result, with a
/// template that supports tools).</summary>
public sealed record ChatMessage(string Role, string Content)
{
    /// <summary>The functions an assistant turn called (rendered by templates that support tools), or null.</summary>
    public IReadOnlyList<ChatToolCall>? ToolCalls { get; init; }

    public static ChatMessage System(string content) => new("system", content);
    public static ChatMessage User(string content) => new("user", content);
    public static ChatMessage Assistant(string content) => new("assistant", content);
}

/// <summary>A function call of an assistant turn: the function's name and its arguments as a JSON object's text.</summary>
public sealed record ChatToolCall(string Name, string Arguments);

/// <summary>The chat prompt layouts Tern can render without a Jinja engine.</summary>
public enum ChatTemplateShape
{
    /// <summary>No template, or one Tern does not recognise: "User: ...\nAssistant:".</summary>
    Plain,

    /// <summary>Llama-2 chat: <c>&lt;s&gt;[INST] &lt;&lt;SYS&gt;&gt;...&lt;&lt;/SYS&gt;&gt; ... [/INST] answer &lt;/s&gt;</c>.</summary>
    Llama2,

    /// <summary>Llama-3: <c>&lt;|start_header_id|&gt;role&lt;|end_header_id|&gt;\n\n...&lt;|eot_id|&gt;</c> (with the 3.1+ "Cutting Knowledge Date" system block when the template has it).</summary>
    Llama3,

    /// <summary>ChatML (Qwen, many fine-tunes): <c>&lt;|im_start|&gt;role\n...&lt;|im_end|&gt;\n</c>, with the template's default system prompt.</summary>
    ChatML,
}

/// <summary>
/// A chat template recognised from its Jinja text. Tern does not run Jinja; it detects the common layouts by their
/// markers and renders them in C# (see <see cref="ChatFormatter"/>), reproducing transformers' <c>apply_chat_template</c>.
/// </summary>
public sealed class ChatTemplate
{
    private static readonly Regex ChatMLDefaultSystem = new(
        @"<\|im_start\|>system\\n((?:[^'""\\]|\\.)*?)<\|im_end\|>", RegexOptions.CultureInvariant);
    private static readonly Regex KnowledgeDate = new(@"Cutting Knowledge Date: ((?:[^'""\\]|\\.)*?)\\n", RegexOptions.CultureInvariant);
    private static readonly Regex DefaultDatePattern = new(@"set\s+date_string\s*=\s*[""']([^""']*)[""']", RegexOptions.CultureInvariant);

    private ChatTemplate(string? source, ChatTemplateShape shape, bool recognized)
    {
        Source = source;
        Shape = shape;
        IsRecognized = recognized;
    }

    /// <summary>The Jinja text, or null when the tokenizer has no chat template.</summary>
    public string? Source { get; }

    /// <summary>The layout used to render prompts.</summary>
    public ChatTemplateShape Shape { get; }

    /// <summary>False when a template exists but its layout is unknown, so the plain fallback is used instead.</summary>
    public bool IsRecognized { get; }

    /// <summary>True when prompts are rendered with the plain "User:/Assistant:" fallback.</summary>
    public bool UsesFallback => Shape == ChatTemplateShape.Plain;

    /// <summary>True when the template renders tools (it refers to <c>tools</c>) in a layout Tern renders them in: ChatML
    /// with Hermes/Qwen's <c>&lt;tools&gt;</c> block and <c>&lt;tool_call&gt;</c> replies, or Llama 3.1/3.2's JSON tool calls
    /// (the tools in the first user turn, calls as <c>{"name": …, "parameters": …}</c>, results as <c>ipython</c> turns).</summary>
    public bool SupportsTools => Source is { } source && source.Contains("tools", StringComparison.Ordinal) && Shape switch
    {
        ChatTemplateShape.ChatML => true,
        ChatTemplateShape.Llama3 => KnowledgeCutoff is not null && source.Contains("ipython", StringComparison.Ordinal),
        _ => false,
    };

    /// <summary>The key of a tool call's arguments in the JSON the template shows the model: <c>"parameters"</c> for Llama 3.1+,
    /// <c>"arguments"</c> otherwise (what a forced call writes: see <see cref="Structured.ToolCalls.Schema"/>).</summary>
    public string ToolCallArguments => Shape == ChatTemplateShape.Llama3 ? "parameters" : "arguments";

    /// <summary>A note for the user when the fallback replaces a template, else null.</summary>
    public string? Warning => IsRecognized ? null
        : "The chat template of this model has a layout Tern does not recognise; prompts use the plain \"User: ... / Assistant:\" format instead.";

    /// <summary>ChatML: the system prompt the template inserts when the conversation has none (e.g. "You are a helpful assistant.").</summary>
    public string? DefaultSystemPrompt { get; private init; }

    /// <summary>Llama-3.1+: the "Cutting Knowledge Date" line value, when the template has one.</summary>
    public string? KnowledgeCutoff { get; private init; }

    /// <summary>Llama-3.1+: the template's default "Today Date" (e.g. "26 Jul 2024"); null when it uses the current date.</summary>
    public string? DefaultDate { get; private init; }

    /// <summary>Recognises the layout of <paramref name="template"/> (null or blank → the plain fallback).</summary>
    public static ChatTemplate Detect(string? template)
    {
        if (string.IsNullOrWhiteSpace(template)) return new ChatTemplate(template, ChatTemplateShape.Plain, recognized: true);
        if (template.Contains("<|start_header_id|>", StringComparison.Ordinal))
        {
            var cutoff = KnowledgeDate.Match(template);
            var date = DefaultDatePattern.Match(template);
            return new ChatTemplate(template, ChatTemplateShape.Llama3, true)
            {
                KnowledgeCutoff = cutoff.Success ? UnescapeJinja(cutoff.Groups[1].Value) : null,
                // Llama 3.2 dates the prompt today through transformers' strftime_now; its literal date is the fallback without it.
                DefaultDate = date.Success && !template.Contains("strftime_now", StringComparison.Ordinal) ? date.Groups[1].Value : null,
            };
        }
        if (template.Contains("<|im_start|>", StringComparison.Ordinal))
        {
            var m = ChatMLDefaultSystem.Match(template);
            return new ChatTemplate(template, ChatTemplateShape.ChatML, true)
            {
                DefaultSystemPrompt = m.Success ? UnescapeJinja(m.Groups[1].Value) : null,
            };
        }
        if (template.Contains("[INST]", StringComparison.Ordinal) && template.Contains("<<SYS>>", StringComparison.Ordinal))
            return new ChatTemplate(template, ChatTemplateShape.Llama2, true);
        return new ChatTemplate(template, ChatTemplateShape.Plain, recognized: false);
    }

    /// <summary>Undoes the escapes of a Jinja string literal (<c>\n</c>, <c>\'</c>, ...).</summary>
    private static string UnescapeJinja(string s)
    {
        if (!s.Contains('\\')) return s;
        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] != '\\' || i + 1 == s.Length) { sb.Append(s[i]); continue; }
            char c = s[++i];
            sb.Append(c switch { 'n' => '\n', 't' => '\t', 'r' => '\r', _ => c });
        }
        return sb.ToString();
    }
}

/// <summary>
/// Renders a conversation into the prompt string the model was trained on, as transformers'
/// <c>apply_chat_template(messages, tokenize=False, add_generation_prompt=...)</c> does for the recognised layouts.
/// Encode the result with <c>addSpecialTokens: false</c>: the templates already contain the BOS token.
/// </summary>
public sealed class ChatFormatter
{
    public ChatFormatter(ChatTemplate template, string? bosToken, string? eosToken)
    {
        Template = template ?? throw new ArgumentNullException(nameof(template));
        BosToken = bosToken ?? "";
        EosToken = eosToken ?? "";
    }

    /// <summary>The detected template.</summary>
    public ChatTemplate Template { get; }

    /// <summary>The BOS string the templates insert (empty when the tokenizer has none).</summary>
    public string BosToken { get; }

    /// <summary>The EOS string the templates insert (empty when the tokenizer has none).</summary>
    public string EosToken { get; }

    /// <summary>True when the plain fallback is used (no template, or an unrecognised one: see <see cref="ChatTemplate.Warning"/>).</summary>
    public bool UsesFallback => Template.UsesFallback;

    /// <summary>The prompt for <paramref name="messages"/>; with <paramref name="addGenerationPrompt"/> it ends where the assistant's
    /// reply starts. <paramref name="tools"/> (each a JSON object <c>{"type": "function", "function": {...}}</c>) need a template
    /// that <see cref="ChatTemplate.SupportsTools"/> (else <see cref="NotSupportedException"/>); a conversation the template
    /// cannot render with them (Llama 3.1: several calls in one turn, no user message for the tools) throws
    /// <see cref="ArgumentException"/>.</summary>
    public string Format(IEnumerable<ChatMessage> messages, bool addGenerationPrompt = true, IReadOnlyList<System.Text.Json.JsonElement>? tools = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var list = messages.ToList();
        bool hasTools = tools is { Count: > 0 } || list.Any(m => m.ToolCalls is { Count: > 0 } || IsRole(m, "tool"));
        if (hasTools && !Template.SupportsTools)
            throw new NotSupportedException("this model's chat template does not render tools (tool definitions, tool calls or tool results).");
        return Template.Shape switch
        {
            ChatTemplateShape.Llama2 => FormatLlama2(list),
            ChatTemplateShape.Llama3 => FormatLlama3(list, addGenerationPrompt, tools is { Count: > 0 } ? tools : null),
            ChatTemplateShape.ChatML when hasTools => FormatChatMLTools(list, addGenerationPrompt, tools ?? Array.Empty<System.Text.Json.JsonElement>()),
            ChatTemplateShape.ChatML => FormatChatML(list, addGenerationPrompt),
            _ => FormatPlain(list, addGenerationPrompt),
        };
    }

    /// <summary>ChatML with tools as Qwen2.5's (Hermes-style) template renders them: a system turn listing the tools in
    /// <c>&lt;tools&gt;</c>, assistant calls as <c>&lt;tool_call&gt;</c> blocks, consecutive tool results in one user turn of
    /// <c>&lt;tool_response&gt;</c> blocks. JSON is written as Jinja's <c>tojson</c> writes it (Python's separators).</summary>
    private string FormatChatMLTools(List<ChatMessage> messages, bool addGenerationPrompt, IReadOnlyList<System.Text.Json.JsonElement> tools)
    {
        var sb = new StringBuilder();
        bool leadingSystem = messages.Count > 0 && IsRole(messages[0], "system");
        if (tools.Count > 0)
        {
            sb.Append("<|im_start|>system\n").Append(leadingSystem ? messages[0].Content : Template.DefaultSystemPrompt ?? "")
              .Append("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n")
              .Append("You are provided with function signatures within <tools></tools> XML tags:\n<tools>");
            foreach (var tool in tools) sb.Append('\n').Append(PythonJson.Write(tool));
            sb.Append("\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n")
              .Append("<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n");
        }
        else if (leadingSystem) sb.Append("<|im_start|>system\n").Append(messages[0].Content).Append("<|im_end|>\n");
        else if (Template.DefaultSystemPrompt is { } defaultSystem) sb.Append("<|im_start|>system\n").Append(defaultSystem).Append("<|im_end|>\n");
        for (int i = leadingSystem ? 1 : 0; i < messages.Count; i++)
        {
            var m = messages[i];
            if (IsRole(m, "tool"))
            {
                if (i == 0 || !IsRole(messages[i - 1], "tool")) sb.Append("<|im_start|>user");
                sb.Append("\n<tool_response>\n").Append(m.Content).Append("\n</tool_response>");
                if (i == messages.Count - 1 || !IsRole(messages[i + 1], "tool")) sb.Append("<|im_end|>\n");
            }
            else if (IsRole(m, "assistant") && m.ToolCalls is { Count: > 0 } calls)
            {
                sb.Append("<|im_start|>assistant");
                if (m.Content.Length > 0) sb.Append('\n').Append(m.Content);
                foreach (var call in calls)
                {
                    using var arguments = System.Text.Json.JsonDocument.Parse(call.Arguments);
                    sb.Append("\n<tool_call>\n{\"name\": \"").Append(call.Name).Append("\", \"arguments\": ").Append(PythonJson.Write(arguments.RootElement)).Append("}\n</tool_call>");
                }
                sb.Append("<|im_end|>\n");
            }
            else sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
        }
        if (addGenerationPrompt) sb.Append("<|im_start|>assistant\n");
        return sb.ToString();
    }

    private static bool IsRole(ChatMessage m, string role) => string.Equals(m.Role, role, StringComparison.Ordinal);

    /// <summary>Python's <c>str.strip()</c> / Jinja's <c>trim</c>.</summary>
    private static string Strip(string s) => s.Trim();

    private string FormatLlama2(List<ChatMessage> messages)
    {
        string? system = null;
        if (messages.Count > 0 && IsRole(messages[0], "system"))
        {
            system = messages[0].Content;
            messages = messages.Skip(1).ToList();
        }
        var sb = new StringBuilder();
        for (int i = 0; i < messages.Count; i++)
        {
            var m = messages[i];
            string content = i == 0 && system is not null ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + m.Content : m.Content;
            if (IsRole(m, "user")) sb.Append(BosToken).Append("[INST] ").Append(Strip(content)).Append(" [/INST]");
            else if (IsRole(m, "assistant")) sb.Append(' ').Append(Strip(content)).Append(' ').Append(EosToken);
        }
        // The Llama-2 template has no generation prompt: the reply follows "[/INST]".
        return sb.ToString();
    }

    /// <summary>Llama 3; with 3.1+'s dated system block, and its JSON tools as Llama 3.1/3.2's templates render them (with
    /// <c>tools_in_user_message</c> at its default, true): "Environment: ipython" in the system block, the tools (as
    /// <c>tojson(indent=4)</c>) in the first user turn, a call as <c>{"name": …, "parameters": …}</c> (one per turn), a tool
    /// result as an <c>ipython</c> turn holding the result's text as a JSON string.</summary>
    private string FormatLlama3(List<ChatMessage> messages, bool addGenerationPrompt, IReadOnlyList<System.Text.Json.JsonElement>? tools)
    {
        var sb = new StringBuilder(BosToken);
        if (Template.KnowledgeCutoff is { } cutoff)
        {
            // Llama 3.1+: a system block always comes first, with the dates and then the system message.
            string system = "";
            if (messages.Count > 0 && IsRole(messages[0], "system"))
            {
                system = Strip(messages[0].Content);
                messages = messages.Skip(1).ToList();
            }
            string date = Template.DefaultDate ?? DateTime.Now.ToString("dd MMM yyyy", CultureInfo.InvariantCulture);
            sb.Append("<|start_header_id|>system<|end_header_id|>\n\n");
            if (tools is not null) sb.Append("Environment: ipython\n");
            sb.Append("Cutting Knowledge Date: ").Append(cutoff).Append('\n')
              .Append("Today Date: ").Append(date).Append("\n\n")
              .Append(system).Append("<|eot_id|>");
        }
        if (tools is not null)
        {
            if (messages.Count == 0) throw new ArgumentException("this model's chat template puts the tools in the first user message, and there is none.", nameof(messages));
            sb.Append("<|start_header_id|>user<|end_header_id|>\n\n")
              .Append("Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n")
              .Append("Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n");
            foreach (var tool in tools) sb.Append(PythonJson.Write(tool, indent: 4)).Append("\n\n");
            sb.Append(Strip(messages[0].Content)).Append("<|eot_id|>");
            messages = messages.Skip(1).ToList();
        }
        foreach (var m in messages)
        {
            if (IsRole(m, "tool"))
                sb.Append("<|start_header_id|>ipython<|end_header_id|>\n\n").Append(PythonJson.Write(m.Content)).Append("<|eot_id|>");
            else if (m.ToolCalls is { Count: > 0 } calls)
            {
                if (calls.Count > 1) throw new ArgumentException($"this model's chat template renders one tool call per assistant message (got {calls.Count}).", nameof(messages));
                using var arguments = System.Text.Json.JsonDocument.Parse(calls[0].Arguments);
                sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"").Append(calls[0].Name).Append("\", \"parameters\": ")
                  .Append(PythonJson.Write(arguments.RootElement)).Append("}<|eot_id|>");
            }
            else sb.Append("<|start_header_id|>").Append(m.Role).Append("<|end_header_id|>\n\n").Append(Strip(m.Content)).Append("<|eot_id|>");
        }
        if (addGenerationPrompt) sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
        return sb.ToString();
    }

    private string FormatChatML(List<ChatMessage> messages, bool addGenerationPrompt)
    {
        var sb = new StringBuilder();
        if (Template.DefaultSystemPrompt is { } defaultSystem && (messages.Count == 0 || !IsRole(messages[0], "system")))
            sb.Append("<|im_start|>system\n").Append(defaultSystem).Append("<|im_end|>\n");
        foreach (var m in messages)
            sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
        if (addGenerationPrompt) sb.Append("<|im_start|>assistant\n");
        return sb.ToString();
    }

    private static string FormatPlain(List<ChatMessage> messages, bool addGenerationPrompt)
    {
        var sb = new StringBuilder();
        foreach (var m in messages)
        {
            string role = m.Role.Length == 0 ? "User" : char.ToUpperInvariant(m.Role[0]) + m.Role[1..];
            sb.Append(role).Append(": ").Append(m.Content).Append('\n');
        }
        if (addGenerationPrompt) sb.Append("Assistant:");
        return sb.ToString();
    }
}

/// <summary>JSON as Python's <c>json.dumps(x, ensure_ascii=False, indent=…)</c> (Jinja's <c>tojson</c> in transformers) writes
/// it: ", " and ": " between items (with an indent: "," at each line's end), non-ASCII text kept.</summary>
internal static class PythonJson
{
    private static readonly System.Text.Json.JsonSerializerOptions Relaxed = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static string Write(System.Text.Json.JsonElement e, int? indent = null)
    {
        var sb = new StringBuilder();
        Append(sb, e, indent, 0);
        return sb.ToString();
    }

    /// <summary>A string as a JSON string literal.</summary>
    public static string Write(string s) => System.Text.Json.JsonSerializer.Serialize(s, Relaxed);

    private static void Append(StringBuilder sb, System.Text.Json.JsonElement e, int? indent, int depth)
    {
        switch (e.ValueKind)
        {
            case System.Text.Json.JsonValueKind.Object:
                Items(sb, '{', '}', e.EnumerateObject().Select(p => ((string?)p.Name, p.Value)).ToList(), indent, depth);
                break;
            case System.Text.Json.JsonValueKind.Array:
                Items(sb, '[', ']', e.EnumerateArray().Select(v => ((string?)null, v)).ToList(), indent, depth);
                break;
            case System.Text.Json.JsonValueKind.String:
                sb.Append(Write(e.GetString()!));
                break;
            default:
                sb.Append(e.GetRawText());
                break;
        }
    }

    /// <summary>An object's members (with names) or an array's items; empty ones stay <c>{}</c>/<c>[]</c> as in Python.</summary>
    private static void Items(StringBuilder sb, char open, char close, List<(string? Name, System.Text.Json.JsonElement Value)> items, int? indent, int depth)
    {
        sb.Append(open);
        for (int i = 0; i < items.Count; i++)
        {
            if (indent is { } n) sb.Append(i > 0 ? ",\n" : "\n").Append(' ', n * (depth + 1));
            else if (i > 0) sb.Append(", ");
            if (items[i].Name is { } name) sb.Append(Write(name)).Append(": ");
            Append(sb, items[i].Value, indent, depth + 1);
        }
        if (indent is { } m && items.Count > 0) sb.Append('\n').Append(' ', m * depth);
        sb.Append(close);
    }
}
