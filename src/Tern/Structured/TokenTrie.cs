using System.Runtime.CompilerServices;
using Tern.Tokenization;

namespace Tern.Structured;

/// <summary>
/// A tokenizer's vocabulary as a trie of token bytes (<see cref="TernTokenizer.TokenBytes"/>), built once per tokenizer: a
/// mask walks it with the automaton, so a byte refused at a node prunes every token below it instead of testing each
/// token. Added and special tokens are left out (only the stop ids may end a document).
/// </summary>
internal sealed class TokenTrie
{
    static readonly ConditionalWeakTable<TernTokenizer, TokenTrie> Built = new();

    public sealed class Node
    {
        public byte[] Bytes = Array.Empty<byte>(); // child labels
        public Node[] Children = Array.Empty<Node>();
        public int[] Tokens = Array.Empty<int>(); // tokens whose bytes end here
    }

    public Node Root { get; }

    /// <summary>Tokens in the trie.</summary>
    public int Count { get; }

    readonly byte[]?[] bytesOf;

    /// <summary>The bytes of token <paramref name="id"/>, or null when it is not in the trie (special, added, unknown).</summary>
    public byte[]? Bytes(int id) => id >= 0 && id < bytesOf.Length ? bytesOf[id] : null;

    TokenTrie(TernTokenizer tokenizer)
    {
        var root = new Building();
        int count = 0;
        bytesOf = new byte[]?[tokenizer.IdLimit];
        for (int id = 0; id < bytesOf.Length; id++)
        {
            if (tokenizer.TokenBytes(id) is not { Length: > 0 } bytes) continue;
            bytesOf[id] = bytes;
            var node = root;
            foreach (byte b in bytes) node = node.Children.TryGetValue(b, out var child) ? child : node.Children[b] = new Building();
            node.Tokens.Add(id);
            count++;
        }
        Root = root.Freeze();
        Count = count;
    }

    /// <summary>The trie of <paramref name="tokenizer"/>'s vocabulary (built on first use).</summary>
    public static TokenTrie For(TernTokenizer tokenizer) => Built.GetValue(tokenizer, t => new TokenTrie(t));

    sealed class Building
    {
        public readonly SortedDictionary<byte, Building> Children = new();
        public readonly List<int> Tokens = new();

        public Node Freeze() => new()
        {
            Bytes = Children.Keys.ToArray(),
            Children = Children.Values.Select(c => c.Freeze()).ToArray(),
            Tokens = Tokens.ToArray(),
        };
    }
}
