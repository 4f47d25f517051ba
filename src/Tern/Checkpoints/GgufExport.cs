using System.Text.Json.Nodes;
using Tern.Runtime;
using Tern.Tokenization;
using static TorchSharp.torch;

namespace Tern.Checkpoints;

/// <summary>What <see cref="GgufExport.Run"/> writes.</summary>
public sealed record GgufExportOptions
{
    /// <summary>Storage of the matrices (1-D tensors such as norms stay fp32, as llama.cpp's converter keeps them; a matrix
    /// whose rows are not whole q8_0 blocks falls back to f16).</summary>
    public GgufTensorType Type { get; init; } = GgufTensorType.F32;

    /// <summary><c>general.name</c>; null takes the model folder's name.</summary>
    public string? Name { get; init; }
}

/// <summary>
/// Writes a Llama-family Hugging Face model folder as one GGUF file that llama.cpp (and LLamaSharp, Ollama) runs with its
/// <c>llama</c> architecture: llama.cpp's tensor names, query and key rows permuted from Hugging Face's half-split rotary
/// layout to llama.cpp's interleaved one (as <c>convert_hf_to_gguf.py</c> does), the hyper-parameters, and the byte-level BPE
/// tokenizer (tokens, merges, token types, special token ids, chat template). Models llama.cpp would run wrongly are refused.
/// </summary>
public static class GgufExport
{
    /// <summary>Writes <paramref name="modelDirectory"/> to <paramref name="outputFile"/> atomically (a partial file never
    /// appears under that name).</summary>
    /// <exception cref="CheckpointException">The model or its tokenizer has a feature llama.cpp's llama architecture does
    /// not run as Tern does (an activation other than SiLU, biases, rotary scaling, low-rank factors, a
    /// tokenizer other than GPT-2-style byte-level BPE).</exception>
    public static void Run(string modelDirectory, string outputFile, GgufExportOptions options)
    {
        var config = HfConfig.Load(modelDirectory);
        var shape = CheckSupported(config);
        var tokenizer = TernTokenizer.Load(modelDirectory);
        using var reader = CheckpointReader.Open(modelDirectory);

        var gguf = new GgufWriter();
        gguf.Add("general.architecture", "llama");
        gguf.Add("general.name", options.Name ?? Path.GetFileName(Path.GetFullPath(modelDirectory).TrimEnd('/')));
        gguf.Add("general.file_type", options.Type switch { GgufTensorType.F16 => 1u, GgufTensorType.Q8_0 => 7u, _ => 0u });
        gguf.Add("llama.vocab_size", (uint)shape.Vocab);
        gguf.Add("llama.context_length", (uint)(config.GetInt("max_position_embeddings") ?? 2048));
        gguf.Add("llama.embedding_length", (uint)shape.Hidden);
        gguf.Add("llama.block_count", (uint)shape.Layers);
        gguf.Add("llama.feed_forward_length", (uint)config.RequireInt("intermediate_size"));
        gguf.Add("llama.attention.head_count", (uint)shape.Heads);
        gguf.Add("llama.attention.head_count_kv", (uint)shape.KvHeads);
        gguf.Add("llama.attention.key_length", (uint)shape.HeadDim);
        gguf.Add("llama.attention.value_length", (uint)shape.HeadDim);
        gguf.Add("llama.rope.dimension_count", (uint)shape.HeadDim);
        gguf.Add("llama.rope.freq_base", (float)Models.RopeSettings.FromConfig(config).Theta);
        gguf.Add("llama.attention.layer_norm_rms_epsilon", (float)(config.GetDouble("rms_norm_eps") ?? 1e-6));
        AddTokenizer(gguf, modelDirectory, tokenizer, shape.Vocab);

        var names = TensorNames(config, shape.Layers).ToArray();
        // A tied model may still store lm_head.weight (a copy of the embedding); rotary inverse frequencies are recomputed.
        var known = names.Select(t => t.Hf).Append("lm_head.weight").ToHashSet();
        if (reader.Names.FirstOrDefault(n => !known.Contains(n) && !n.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal)) is { } extra)
            throw new CheckpointException($"{modelDirectory}: tensor {extra} has no place in llama.cpp's llama architecture.");
        foreach (var (hf, name, heads) in names)
        {
            if (!reader.Contains(hf))
                throw new CheckpointException($"{modelDirectory}: tensor {hf} is missing.");
            long[] dims = reader.Info(hf).Shape.ToArray();
            var type = dims.Length == 1 ? GgufTensorType.F32
                : options.Type == GgufTensorType.Q8_0 && dims[^1] % GgufWriter.Q8BlockSize != 0 ? GgufTensorType.F16
                : options.Type;
            gguf.AddTensor(name, dims, type, () =>
            {
                var w = reader.LoadAsStored(hf, ScalarType.Float32);
                // Hugging Face rotates each head's halves (x_i, x_{i+d/2}); llama.cpp's llama rotates neighbours (x_2i, x_2i+1).
                return heads == 0 ? w : w.reshape(heads, 2, dims[0] / heads / 2, dims[1]).transpose(1, 2).reshape(dims);
            });
        }
        AtomicFile.Write(outputFile, gguf.Write);
    }

    readonly record struct Shape(int Vocab, int Hidden, int Layers, int Heads, int KvHeads, int HeadDim);

    static Shape CheckSupported(HfConfig c)
    {
        if (c.ModelType != "llama")
            throw new CheckpointException($"{c.Path}: GGUF export supports Llama models (model_type 'llama'), not '{c.ModelType}'.");
        string act = c.GetString("hidden_act") ?? "silu";
        if (act is not ("silu" or "swish"))
            throw new CheckpointException($"{c.Path}: hidden_act is '{act}', but llama.cpp's llama architecture always computes the MLP " +
                "with SiLU (no GGUF key selects another activation), so llama.cpp would run this model wrongly; GGUF export needs a SiLU model.");
        if ((c.GetBool("attention_bias") ?? false) || (c.GetBool("mlp_bias") ?? false))
            throw new CheckpointException($"{c.Path}: GGUF export does not write attention or MLP biases yet.");
        var rope = Models.RopeSettings.FromConfig(c);
        if (rope.Type != "default" || rope.PartialRotaryFactor != 1)
            throw new CheckpointException($"{c.Path}: GGUF export supports plain rotary embeddings, not rope scaling or partial rotary.");
        if (c.Has(Models.LowRankLayout.ConfigKey))
            throw new CheckpointException($"{c.Path}: the model has low-rank (InRank) factors; run `tern export --dense` first.");
        int hidden = c.RequireInt("hidden_size"), heads = c.RequireInt("num_attention_heads");
        return new Shape(c.RequireInt("vocab_size"), hidden, c.RequireInt("num_hidden_layers"), heads,
            c.GetInt("num_key_value_heads") ?? heads, c.GetInt("head_dim") ?? hidden / heads);
    }

    /// <summary>Each weight: its Hugging Face name, its llama.cpp name, and the head count whose rows are permuted (0: none).</summary>
    static IEnumerable<(string Hf, string Gguf, int PermuteHeads)> TensorNames(HfConfig c, int layers)
    {
        int heads = c.RequireInt("num_attention_heads"), kvHeads = c.GetInt("num_key_value_heads") ?? heads;
        yield return ("model.embed_tokens.weight", "token_embd.weight", 0);
        for (int i = 0; i < layers; i++)
        {
            string hf = $"model.layers.{i}.", g = $"blk.{i}.";
            yield return (hf + "input_layernorm.weight", g + "attn_norm.weight", 0);
            yield return (hf + "self_attn.q_proj.weight", g + "attn_q.weight", heads);
            yield return (hf + "self_attn.k_proj.weight", g + "attn_k.weight", kvHeads);
            yield return (hf + "self_attn.v_proj.weight", g + "attn_v.weight", 0);
            yield return (hf + "self_attn.o_proj.weight", g + "attn_output.weight", 0);
            yield return (hf + "post_attention_layernorm.weight", g + "ffn_norm.weight", 0);
            yield return (hf + "mlp.gate_proj.weight", g + "ffn_gate.weight", 0);
            yield return (hf + "mlp.up_proj.weight", g + "ffn_up.weight", 0);
            yield return (hf + "mlp.down_proj.weight", g + "ffn_down.weight", 0);
        }
        yield return ("model.norm.weight", "output_norm.weight", 0);
        // Tied models have no head of their own: llama.cpp then reuses token_embd.
        if (!(c.GetBool("tie_word_embeddings") ?? false)) yield return ("lm_head.weight", "output.weight", 0);
    }

    /// <summary>llama.cpp's "gpt2" tokenizer: byte-level BPE tokens and merges from tokenizer.json, the GPT-2 pre-tokenizer.</summary>
    static void AddTokenizer(GgufWriter gguf, string modelDirectory, TernTokenizer tokenizer, int vocabSize)
    {
        string path = Path.Combine(modelDirectory, "tokenizer.json");
        if (!File.Exists(path)) throw new CheckpointException($"{modelDirectory}: GGUF export needs a tokenizer.json (byte-level BPE).");
        var json = JsonNode.Parse(File.ReadAllText(path))!;
        var model = json["model"] as JsonObject;
        var pre = json["pre_tokenizer"] as JsonObject;
        // llama.cpp's "gpt-2" pre-tokenizer is exactly ByteLevel with GPT-2's regex and no prefix space; others would split text differently.
        bool gpt2 = (string?)model?["type"] == "BPE" && json["normalizer"] is null && (string?)pre?["type"] == "ByteLevel"
            && (bool?)pre["use_regex"] != false && (bool?)pre["add_prefix_space"] != true;
        if (!gpt2)
            throw new CheckpointException($"{path}: GGUF export supports GPT-2-style byte-level BPE tokenizers (no normalizer, ByteLevel pre-tokenizer " +
                "with its regex and no prefix space); this one would be split differently by llama.cpp.");

        var tokens = new string?[vocabSize];
        var types = new int[vocabSize];
        foreach (var (token, id) in model!["vocab"]!.AsObject())
        {
            int i = (int)id!;
            if (i < vocabSize) (tokens[i], types[i]) = (token, 1); // 1: normal
        }
        foreach (var added in json["added_tokens"]?.AsArray() ?? [])
        {
            int i = (int)added!["id"]!;
            if (i < vocabSize) (tokens[i], types[i]) = ((string)added["content"]!, (bool?)added["special"] == true ? 3 : 4); // control, user-defined
        }
        for (int i = 0; i < vocabSize; i++)
            if (tokens[i] is null) (tokens[i], types[i]) = ($"[PAD{i}]", 5); // unused rows of a padded embedding
        var merges = model["merges"]!.AsArray()
            .Select(m => m is JsonArray pair ? $"{(string)pair[0]!} {(string)pair[1]!}" : (string)m!).ToArray();

        gguf.Add("tokenizer.ggml.model", "gpt2");
        gguf.Add("tokenizer.ggml.pre", "gpt-2");
        gguf.Add("tokenizer.ggml.tokens", tokens!);
        gguf.Add("tokenizer.ggml.token_type", types);
        gguf.Add("tokenizer.ggml.merges", merges);
        if (tokenizer.BosTokenId is int bos) gguf.Add("tokenizer.ggml.bos_token_id", (uint)bos);
        if (tokenizer.EosTokenId is int eos) gguf.Add("tokenizer.ggml.eos_token_id", (uint)eos);
        if (tokenizer.PadTokenId is int pad) gguf.Add("tokenizer.ggml.padding_token_id", (uint)pad);
        // What Tern's own encoding does with special tokens, so llama.cpp's tokenize(add_special) gives the same ids.
        gguf.Add("tokenizer.ggml.add_bos_token", tokenizer.AddsBosToken);
        var plain = tokenizer.Encode("a", addSpecialTokens: false);
        var special = tokenizer.Encode("a", addSpecialTokens: true);
        gguf.Add("tokenizer.ggml.add_eos_token", special.Count > plain.Count && tokenizer.EosTokenId is int e && special[^1] == e);
        if (tokenizer.ChatTemplate is { } template) gguf.Add("tokenizer.chat_template", template);
    }
}
