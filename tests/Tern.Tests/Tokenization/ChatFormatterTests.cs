using Tern.Tokenization;

namespace Tern.Tests.Tokenization;

public class ChatFormatterTests
{
    [Fact]
    public void No_template_uses_the_plain_format()
    {
        var formatter = new ChatFormatter(ChatTemplate.Detect(null), null, null);
        Assert.True(formatter.UsesFallback);
        Assert.True(formatter.Template.IsRecognized);
        Assert.Null(formatter.Template.Warning);
        Assert.Equal("User: Hi\nAssistant:", formatter.Format([ChatMessage.User("Hi")]));
        Assert.Equal("System: Be brief.\nUser: Hi\nAssistant: Hello\n",
            formatter.Format([ChatMessage.System("Be brief."), ChatMessage.User("Hi"), ChatMessage.Assistant("Hello")], addGenerationPrompt: false));
    }

    [Fact]
    public void Unknown_template_falls_back_and_says_so()
    {
        var template = ChatTemplate.Detect("{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}");
        Assert.False(template.IsRecognized);
        Assert.True(template.UsesFallback);
        Assert.NotNull(template.Warning);
        Assert.Equal("User: Hi\nAssistant:", new ChatFormatter(template, "<bos>", "<eos>").Format([ChatMessage.User("Hi")]));
    }

    [Fact]
    public void ChatML_default_system_prompt_is_taken_from_the_template()
    {
        const string qwen = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}" +
                            "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You\\'re helpful.<|im_end|>\\n' }}{%- endif %}";
        var template = ChatTemplate.Detect(qwen);
        Assert.Equal(ChatTemplateShape.ChatML, template.Shape);
        Assert.Equal("You are Qwen, created by Alibaba Cloud. You're helpful.", template.DefaultSystemPrompt);
        Assert.Equal("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You're helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
            new ChatFormatter(template, null, null).Format([ChatMessage.User("Hi")], addGenerationPrompt: false));
    }

    [Fact]
    public void Llama31_template_gets_the_dated_system_block()
    {
        const string llama31 = "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\" %}{%- endif %}" +
                               "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- \"Cutting Knowledge Date: December 2023\\n\" }}" +
                               "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}";
        var formatter = new ChatFormatter(ChatTemplate.Detect(llama31), "<|begin_of_text|>", "<|eot_id|>");
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            formatter.Format([ChatMessage.System(" Be brief. "), ChatMessage.User("Hi")]));
    }
    /// <summary>Llama 3.1 Instruct's template as published (tests/fixtures/chat-templates).</summary>
    static readonly string Llama31 = File.ReadAllText(Path.Combine(Fixtures.Root, "chat-templates", "llama-3.1-instruct.jinja"));

    /// <summary>The tools, calls and results of Llama 3.1's template, against the text transformers renders (Jinja with its
    /// <c>tojson</c>: indent 4 for tools, a tool result's text as a JSON string).</summary>
    [Fact]
    public void Llama31_template_renders_tools_calls_and_results()
    {
        var template = ChatTemplate.Detect(Llama31);
        Assert.True(template.SupportsTools);
        Assert.Equal("parameters", template.ToolCallArguments);
        var formatter = new ChatFormatter(template, "<|begin_of_text|>", "<|eot_id|>");
        using var tool = System.Text.Json.JsonDocument.Parse("""
            {"type": "function", "function": {"name": "get_time", "description": "The time in a city.", "parameters": {"type": "object",
             "properties": {"city": {"type": "string"}, "when": {"type": "array", "items": {}}}, "required": ["city"]}}}
            """);
        ChatMessage[] messages =
        [
            ChatMessage.System(" Be brief. "), ChatMessage.User("Time in Paris? "),
            new("assistant", "") { ToolCalls = [new ChatToolCall("get_time", """{"city":"Paris","ünï":[1,2.5]}""")] },
            new("tool", """{"time": "12:00"}"""), ChatMessage.Assistant("Noon."), ChatMessage.User("Thanks"),
        ];
        const string calls = "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_time\", \"parameters\": {\"city\": \"Paris\", \"ünï\": [1, 2.5]}}<|eot_id|>" +
            "<|start_header_id|>ipython<|end_header_id|>\n\n\"{\\\"time\\\": \\\"12:00\\\"}\"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nNoon.<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nThanks<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n" +
            "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n" +
            "{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_time\",\n        \"description\": \"The time in a city.\",\n        \"parameters\": {\n" +
            "            \"type\": \"object\",\n            \"properties\": {\n                \"city\": {\n                    \"type\": \"string\"\n                },\n" +
            "                \"when\": {\n                    \"type\": \"array\",\n                    \"items\": {}\n                }\n            },\n" +
            "            \"required\": [\n                \"city\"\n            ]\n        }\n    }\n}\n\nTime in Paris?<|eot_id|>" + calls,
            formatter.Format(messages, addGenerationPrompt: true, [tool.RootElement]));
        // Without tools the calls and results still render as the template writes them.
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nTime in Paris?<|eot_id|>" + calls,
            formatter.Format(messages[1..]));
        // What the template refuses (raise_exception): two calls in one turn, tools with no user message to carry them.
        var two = new ChatMessage("assistant", "") { ToolCalls = [new ChatToolCall("get_time", "{}"), new ChatToolCall("get_time", "{}")] };
        Assert.Equal("messages", Assert.Throws<ArgumentException>(() => formatter.Format([ChatMessage.User("Hi"), two])).ParamName);
        Assert.Equal("messages", Assert.Throws<ArgumentException>(() => formatter.Format([ChatMessage.System("S")], true, [tool.RootElement])).ParamName);
    }

    [Fact]
    public void Llama3_templates_without_tools_refuse_them()
    {
        // Llama 3.0's template: no tools, no dated system block.
        var llama30 = ChatTemplate.Detect("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + " +
            "'<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}");
        Assert.Equal(ChatTemplateShape.Llama3, llama30.Shape);
        Assert.False(llama30.SupportsTools);
        var formatter = new ChatFormatter(llama30, "<|begin_of_text|>", "<|eot_id|>");
        Assert.Throws<NotSupportedException>(() => formatter.Format([ChatMessage.User("Hi"), new ChatMessage("tool", "12:00")]));
    }

    [Fact]
    public void Llama32_template_dates_the_prompt_today()
    {
        // Llama 3.2 takes today's date from transformers' strftime_now; "26 Jul 2024" is only its fallback.
        string llama32 = Llama31.Replace("{%- set date_string = \"26 Jul 2024\" %}",
            "{%- if strftime_now is defined %}{%- set date_string = strftime_now(\"%d %b %Y\") %}{%- else %}{%- set date_string = \"26 Jul 2024\" %}{%- endif %}");
        Assert.NotEqual(Llama31, llama32);
        var template = ChatTemplate.Detect(llama32);
        Assert.Null(template.DefaultDate);
        Assert.Equal("26 Jul 2024", ChatTemplate.Detect(Llama31).DefaultDate);
    }
}
