using System.Text.Json.Nodes;
using Tern.Structured;

namespace Tern.Tests.Structured;

/// <summary><see cref="ToolCallStream"/>: a reply fed in pieces of any size gives the text and calls <see cref="ToolCalls.Parse"/>
/// reads from it whole, with each call's name before its arguments and the arguments of a call in its template's header
/// streamed in pieces.</summary>
public sealed class ToolCallStreamTests
{
    static readonly ToolFunction[] Functions = [new("get_time", null), new("get_weather", null)];

    public static TheoryData<string, bool> Replies => new()
    {
        { "Let me check.\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>", true },
        { "<|python_tag|>{\"name\": \"get_time\", \"parameters\": {\"city\": \"Lima\", \"n\": [1, {\"a\": \"}\\\"\"}]}}", true },
        { "{\"name\": \"get_weather\", \"arguments\": {}}", true },
        { "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"a\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"b\": [2]}}\n</tool_call>", true },
        { "<tool_call>{\"name\": \"unknown\", \"arguments\": {}}</tool_call> and text", false },
        { "{\"arguments\": {\"city\": \"Rome\"}, \"name\": \"get_time\"}", false }, // read whole at the end
        { "<tool_call>{\"arguments\": {}, \"name\": \"get_time\"}</tool_call>", false }, // read whole when the block ends
        { "Hello <b>world</b> < tool_call>", false },
        { "{\"answer\": 42}", false },
        { "  ", false },
        { "Cut short <tool_call>{\"name\": \"get_ti", false },
    };

    [Theory]
    [MemberData(nameof(Replies))]
    public void PiecesGiveWhatTheWholeReplyGives(string reply, bool streamsArguments)
    {
        var (expectedContent, expectedCalls) = ToolCalls.Parse(reply, Functions);
        foreach (int size in new[] { 1, 2, 3, 7, reply.Length })
        {
            var stream = new ToolCallStream(Functions);
            var deltas = new List<ToolCallDelta>();
            for (int i = 0; i < reply.Length; i += size) deltas.AddRange(stream.Push(reply.Substring(i, Math.Min(size, reply.Length - i))));
            deltas.AddRange(stream.Finish());

            string content = string.Concat(deltas.Select(d => d.Content));
            Assert.Equal(expectedContent ?? "", content);
            Assert.Equal(expectedCalls.Count, stream.Calls);
            for (int c = 0; c < expectedCalls.Count; c++)
            {
                var mine = deltas.Where(d => d.Index == c).ToList();
                Assert.Equal(expectedCalls[c].Name, mine[0].Name); // the name comes first
                Assert.All(mine.Skip(1), d => Assert.Null(d.Name));
                var pieces = mine.Skip(1).Select(d => d.Arguments!).ToList();
                Assert.True(JsonNode.DeepEquals(JsonNode.Parse(expectedCalls[c].Arguments), JsonNode.Parse(string.Concat(pieces))), string.Concat(pieces));
                if (streamsArguments && size == 1 && expectedCalls[c].Arguments.Length > 2) Assert.True(pieces.Count > 2, $"{pieces.Count} pieces");
            }
        }
    }
}
