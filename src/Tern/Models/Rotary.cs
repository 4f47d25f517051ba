using System.Text.Json.Nodes;
using Tern.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Models;

/// <summary>Rotary position embedding settings, read from transformers 5.x <c>rope_parameters</c> or 4.x
/// <c>rope_theta</c> + <c>rope_scaling</c> (+ <c>rotary_pct</c>/<c>partial_rotary_factor</c>).</summary>
public sealed record RopeSettings(double Theta, string Type, double Factor, double LowFreqFactor, double HighFreqFactor,
    int OriginalMaxPositions, double PartialRotaryFactor)
{
    /// <summary>Reads the settings; <paramref name="defaultTheta"/> applies when no theta is given.</summary>
    public static RopeSettings FromConfig(HfConfig config, double defaultTheta = 10000.0)
    {
        JsonObject? parameters = config.GetObject("rope_parameters");
        JsonObject? scaling = config.GetObject("rope_scaling");
        string source = parameters is not null ? "rope_parameters" : "rope_scaling";
        JsonObject? p = parameters ?? scaling;
        double? Num(string key) => p?[key] is JsonValue v && v.TryGetValue(out double d) ? d : null;
        string? Str(string key) => p?[key] is JsonValue v && v.TryGetValue(out string? s) ? s : null;

        double theta = Num("rope_theta") ?? config.GetDouble("rope_theta") ?? config.GetDouble("rotary_emb_base") ?? defaultTheta;
        string type = (Str("rope_type") ?? Str("type") ?? "default").ToLowerInvariant();
        double partial = Num("partial_rotary_factor") ?? config.GetDouble("partial_rotary_factor") ?? config.GetDouble("rotary_pct") ?? 1.0;
        double factor = Num("factor") ?? 1.0;
        int originalMax = (int)(Num("original_max_position_embeddings") ?? config.GetInt("max_position_embeddings") ?? 2048);
        switch (type)
        {
            case "default":
            case "linear":
                break;
            case "llama3":
                if (Num("low_freq_factor") is null || Num("high_freq_factor") is null || Num("original_max_position_embeddings") is null)
                    throw config.Error(source, "with rope_type 'llama3' needs factor, low_freq_factor, high_freq_factor and original_max_position_embeddings");
                break;
            default:
                throw config.Error(source, $"has rope_type '{type}', which Tern does not support yet (supported: default, linear, llama3)");
        }
        if (factor <= 0) throw config.Error(source, "needs a positive 'factor'");
        if (partial <= 0 || partial > 1) throw config.Error("partial_rotary_factor", "must be in (0, 1]");
        return new RopeSettings(theta, type, factor, Num("low_freq_factor") ?? 1, Num("high_freq_factor") ?? 4, originalMax, partial);
    }

    /// <summary>Inverse frequencies θ_i = base^(-2i/d) for a rotary dimension d, with the configured scaling.</summary>
    public double[] InverseFrequencies(int rotaryDim)
    {
        var inv = new double[rotaryDim / 2];
        for (int i = 0; i < inv.Length; i++)
        {
            // Computed in fp32 like transformers, so tables match bit for bit in fp32.
            float exponent = (float)(2 * i) / rotaryDim;
            inv[i] = 1.0f / MathF.Pow((float)Theta, exponent);
        }
        if (Type == "linear")
            for (int i = 0; i < inv.Length; i++) inv[i] = (float)(inv[i] / Factor);
        else if (Type == "llama3")
        {
            // Llama 3.1 frequency-dependent scaling: long wavelengths are divided by `factor`, short ones kept, a smooth blend between.
            double lowWavelen = OriginalMaxPositions / LowFreqFactor, highWavelen = OriginalMaxPositions / HighFreqFactor;
            for (int i = 0; i < inv.Length; i++)
            {
                double wavelen = 2 * Math.PI / inv[i];
                if (wavelen > lowWavelen) inv[i] = (float)(inv[i] / Factor);
                else if (wavelen >= highWavelen)
                {
                    double smooth = (OriginalMaxPositions / wavelen - LowFreqFactor) / (HighFreqFactor - LowFreqFactor);
                    inv[i] = (float)((1 - smooth) * inv[i] / Factor + smooth * inv[i]);
                }
            }
        }
        return inv;
    }
}

/// <summary>
/// Rotary embedding (RoPE, Su et al.) in the "rotate half" layout of transformers: for the first <c>RotaryDim</c> dims of
/// each head, x' = x·cos(pθ) + rotate_half(x)·sin(pθ). cos/sin tables are built once and grown on demand.
/// </summary>
internal sealed class RotaryEmbedding : IDisposable
{
    readonly float[] inverseFrequencies;
    readonly Device device;
    readonly ScalarType dtype;
    Tensor? cosTable, sinTable; // [positions, rotaryDim]; sin carries the sign of rotate_half: [-sin, +sin]

    public RotaryEmbedding(RopeSettings settings, int headDim, Device device, ScalarType dtype)
    {
        RotaryDim = (int)(headDim * settings.PartialRotaryFactor);
        RotaryDim -= RotaryDim % 2;
        HeadDim = headDim;
        inverseFrequencies = settings.InverseFrequencies(RotaryDim).Select(x => (float)x).ToArray();
        this.device = device;
        this.dtype = dtype;
    }

    public int RotaryDim { get; }
    public int HeadDim { get; }

    void EnsureTable(int positions)
    {
        if (cosTable is not null && cosTable.size(0) >= positions) return;
        int size = Math.Max(positions, 2 * (int)(cosTable?.size(0) ?? 512));
        cosTable?.Dispose();
        sinTable?.Dispose();
        using var scope = torch.NewDisposeScope();
        var t = torch.arange(size, ScalarType.Float32).unsqueeze(1);
        var freqs = t * torch.tensor(inverseFrequencies).unsqueeze(0);           // [size, rot/2]
        var emb = torch.cat(new[] { freqs, freqs }, 1);                          // [size, rot]
        var sign = torch.cat(new[] { -torch.ones(RotaryDim / 2), torch.ones(RotaryDim / 2) });
        cosTable = emb.cos().to(dtype, device).DetachFromDisposeScope(); // lives as long as the model
        sinTable = (emb.sin() * sign).to(dtype, device).DetachFromDisposeScope();
    }

    /// <summary>The rotation of one forward step: positions known, tables gathered only if the fused kernel cannot serve.</summary>
    public RotaryStep ForBatch(ForwardBatch batch)
    {
        EnsureTable(batch.MaxModelPosition + 1);
        return new RotaryStep(this, batch);
    }

    internal sealed class RotaryStep(RotaryEmbedding owner, ForwardBatch batch)
    {
        (Tensor Cos, Tensor Sin)? gathered;

        /// <summary>Queries q and keys k of qkv [batch, tokens, heads + kvHeads + …, headDim], rotated at the step's positions;
        /// when <paramref name="keysAtCacheIndex"/> (StreamingLLM) only the queries are, and the keys stay unrotated for the cache:
        /// the third item is then the rotation attention applies to the cached keys at their cache index. With
        /// <paramref name="queriesInAttention"/> (<see cref="Attention.RotatesQueries"/>) the queries stay unrotated too: attention
        /// rotates them with the keys.</summary>
        public (Tensor Q, Tensor K, RotaryEmbedding? CachedKeys) QueryKey(Tensor qkv, int heads, int kvHeads, bool keysAtCacheIndex,
            bool queriesInAttention = false)
        {
            if (keysAtCacheIndex) return (queriesInAttention ? qkv.narrow(2, 0, heads) : Rotate(qkv, heads), qkv.narrow(2, heads, kvHeads), owner);
            var qk = Rotate(qkv, heads + kvHeads);
            return (qk.narrow(2, 0, heads), qk.narrow(2, heads, kvHeads), null);
        }

        /// <summary>Rotates the first <paramref name="heads"/> heads of qkv [batch, tokens, allHeads, headDim]; returns them,
        /// [batch, tokens, heads, headDim] (in place on CUDA, where one fused kernel does it; a new tensor otherwise).</summary>
        public Tensor Rotate(Tensor qkv, int heads)
        {
            if (Interop.FusedKernels.TryRotaryInPlace(qkv, heads, owner.HeadDim, owner.RotaryDim, batch.ModelPositions, owner.cosTable!, owner.sinTable!))
                return qkv.narrow(2, 0, heads);
            return RotateCopy(qkv.narrow(2, 0, heads));
        }

        /// <summary>Rotates x [batch, tokens, heads, headDim], a view of a fused qkv buffer, in place at the step's positions
        /// with the fused CUDA kernel; false where that does not serve (the CPU, other layouts), x then unchanged.</summary>
        public bool TryRotateInPlaceOnCuda(Tensor x) =>
            Interop.FusedKernels.TryRotaryViewInPlace(x, owner.HeadDim, owner.RotaryDim, batch.ModelPositions, owner.cosTable!, owner.sinTable!);

        /// <summary>Queries q [batch, 1, heads, headDim] rotated in place at the step's positions, and new keys x [batch, 1,
        /// kvHeads, headDim] rotated into <paramref name="attended"/> [batch, kvHeads, Cap, headDim] at the device-held
        /// <paramref name="slot"/>, x unchanged (views of a fused qkv buffer) — one CUDA kernel; false where that does not
        /// serve, nothing changed.</summary>
        public bool TryRotateIntoOnCuda(Tensor q, Tensor x, Tensor attended, Tensor slot) =>
            Interop.FusedKernels.TryRotaryInto(attended, q, x, owner.RotaryDim, batch.ModelPositions, owner.cosTable!, owner.sinTable!, slot);

        /// <summary>Queries q [batch, tokens, heads, headDim], a view of a fused qkv buffer, rotated at the step's positions: in
        /// place on CUDA, else a new tensor.</summary>
        public Tensor RotateQueries(Tensor q) => TryRotateInPlaceOnCuda(q) ? q : RotateCopy(q);

        /// <summary>x [batch, tokens, heads, headDim] rotated at the step's positions, as a new tensor (keys that arrived
        /// unrotated for a cache that stores them rotated, in a step over several caches).</summary>
        public Tensor RotateCopy(Tensor x)
        {
            if (gathered is null)
            {
                // Gathered once per step inside the first layer's scope: move them to the step's scope for the other layers.
                var (cos, sin) = owner.Lookup(batch.ModelPositions, batch.MaxModelPosition);
                gathered = (cos.MoveToOuterDisposeScope(), sin.MoveToOuterDisposeScope());
            }
            return owner.Apply(x, gathered.Value.Cos, gathered.Value.Sin);
        }
    }

    /// <summary>cos and signed sin for positions [batch, tokens] (padding clamped to 0), shaped [batch, tokens, 1, rotaryDim].</summary>
    public (Tensor Cos, Tensor Sin) Lookup(Tensor positions, int maxPosition)
    {
        EnsureTable(maxPosition + 1);
        var flat = positions.clamp_min(0).flatten();
        long b = positions.size(0), t = positions.size(1);
        return (cosTable!.index_select(0, flat).view(b, t, 1, RotaryDim), sinTable!.index_select(0, flat).view(b, t, 1, RotaryDim));
    }

    /// <summary>Rotates cached keys [batch, kvHeads, length, headDim], stored unrotated, to positions [batch, kvHeads, length]
    /// below <paramref name="length"/> (StreamingLLM's cache-index positions; entries of empty slots are rotated to 0).</summary>
    public Tensor RotateCached(Tensor keys, Tensor positions, int length)
    {
        EnsureTable(length);
        var flat = positions.clamp_min(0).flatten();
        var shape = positions.shape.Append(RotaryDim).ToArray();
        return Apply(keys, cosTable!.index_select(0, flat).view(shape), sinTable!.index_select(0, flat).view(shape));
    }

    /// <summary>Rotates cached keys [batch, kvHeads, n, headDim], stored unrotated, to positions start, start + 1, …, start + n − 1
    /// in every row and head (StreamingLLM's cache-index positions of a block of slots in rows without holes): a slice of the
    /// tables, so the same values <see cref="RotateCached"/> gathers for those positions, without the gather.</summary>
    public Tensor RotateRange(Tensor keys, int start)
    {
        int n = (int)keys.size(2);
        EnsureTable(start + n);
        return Apply(keys, cosTable!.narrow(0, start, n), sinTable!.narrow(0, start, n)); // [n, rotaryDim], broadcast over rows and heads
    }

    /// <summary>Keys of slots [<paramref name="start"/>, start + <paramref name="count"/>) stored unrotated in
    /// <paramref name="keys"/> [batch, heads, capacity, headDim] rotated at their own slot index into
    /// <paramref name="attended"/> (the same shape) by one CUDA kernel, with the fused rotary's rounding (once, from fp32);
    /// false where that does not serve (the CPU: <see cref="RotateRange"/>).</summary>
    public bool TryRotateSlotsOnCuda(Tensor attended, Tensor keys, int start, int count)
    {
        if (keys.device_type != DeviceType.CUDA) return false;
        EnsureTable(start + count);
        return Interop.FusedKernels.TryRotarySlots(attended, keys, start, count, RotaryDim, cosTable!, sinTable!);
    }

    /// <summary>Rotates x [batch, tokens, heads, headDim].</summary>
    public Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        if (RotaryDim == HeadDim) return Rotate(x, cos, sin);
        var rotated = Rotate(x.narrow(-1, 0, RotaryDim), cos, sin);
        return torch.cat(new[] { rotated, x.narrow(-1, RotaryDim, HeadDim - RotaryDim) }, -1);
    }

    // rotate_half(x) = cat(-x2, x1) = roll(x, d/2)·[-1, +1]; the sign lives in the sin table.
    Tensor Rotate(Tensor x, Tensor cos, Tensor sin) => torch.addcmul(x * cos, x.roll(RotaryDim / 2, -1), sin, 1);

    public void Dispose()
    {
        cosTable?.Dispose();
        sinTable?.Dispose();
    }
}
