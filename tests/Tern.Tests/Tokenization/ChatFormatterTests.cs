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
}
