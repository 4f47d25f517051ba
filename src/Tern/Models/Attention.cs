using Tern.Caching;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Models;

/// <summary>Per-model attention settings.</summary>
internal sealed record AttentionSettings(int Heads, int KvHeads, int HeadDim)
{
    /// <summary>Keys further than this many positions back are invisible (Mistral's sliding window); 0 = no window.</summary>
    public int SlidingWindow { get; init; }

    /// <summary>Multiplies queries before the standard 1/sqrt(headDim) scaling (e.g. GPT-2's inverse layer index).</summary>
    public double QueryScale { get; init; } = 1.0;

    public int Groups => Heads / KvHeads;
}

/// <summary>
/// Causal attention through a <see cref="LayerKvCache"/>: new keys/values are appended, then queries attend to every cached
/// entry whose original position p_k satisfies 0 ≤ p_k ≤ p_q (and p_q − p_k &lt; window). Fused SDPA serves policies that do
/// not need probabilities; the explicit path softmax(q·kᵀ/√d)·v materialises them for policies that do (H2O); static-shape
/// steps (CUDA graphs) attend over the whole preallocated cache.
/// Grouped-query attention is computed without copying keys: the G query heads of a KV head are stacked as extra query rows.
/// </summary>
internal static class Attention
{
    /// <summary>Queries per block on the path that hands probabilities to the policy (a 2048-token prefill of batch 24 and 32
    /// heads would otherwise need 12.9 GB of fp32 probabilities per layer).</summary>
    const long ProbabilityBlock = 256;

    /// <summary>q [B,T,H,D], k and v [B,T,Hkv,D] (rotated); returns [B,T,H·D].</summary>
    /// <param name="cachedKeyRotation">When the policy positions keys by their cache index, k arrives unrotated and is stored
    /// so; every cached key is then rotated here to its index among its row's occupied slots.</param>
    /// <param name="queriesUnrotated">q arrived unrotated too, as <see cref="RotatesQueries"/> told the model (with
    /// <paramref name="cachedKeyRotation"/>): rotated here, with the new keys.</param>
    public static Tensor Forward(Tensor q, Tensor k, Tensor v, ModelStep step, LayerState state, AttentionSettings s,
        RotaryEmbedding? cachedKeyRotation = null, bool queriesUnrotated = false)
    {
        if (state.Segments is { } segments) return Segmented(q, k, v, segments, state.Layer, s, cachedKeyRotation);
        var cache = state.Cache!;
        if (cache.Device.type != q.device_type) return WhereTheCacheLives(q, k, v, step.Batch, cache, s, cachedKeyRotation);
        return Forward(q, k, v, step, cache, s, cachedKeyRotation, cache.DType, rotateQueries: queriesUnrotated);
    }

    /// <summary>
    /// Whether attention, not the model, rotates the queries of a layer whose input is <paramref name="x"/> [B, T, …]: a
    /// StreamingLLM static-shape decode step on CUDA over one cache on the computing device (so <see cref="Forward(Tensor, Tensor, Tensor, ModelStep, LayerState, AttentionSettings, RotaryEmbedding?, bool)"/>
    /// takes its direct path), where one kernel rotates the queries in place and writes the new keys rotated into the attended
    /// keys' slot (<see cref="RotateWithKeys"/>). The model asks once a layer, leaves its queries unrotated
    /// (<see cref="RotaryEmbedding.RotaryStep.QueryKey"/>) and passes the answer on.
    /// </summary>
    public static bool RotatesQueries(LayerState state, ModelStep step, Tensor x) =>
        state.Cache is { KeysAtCacheIndex: true } cache && cache.Device.type == DeviceType.CUDA && x.device_type == DeviceType.CUDA
        && step.Batch.WriteSlots is not null && x.size(1) == 1;

    /// <summary>Queries that arrived unrotated (<see cref="RotatesQueries"/>) rotated at the step's positions — with the new keys
    /// rotated into their slot of the attended keys in the same kernel (KeysAttended), or alone where that does not serve.</summary>
    static (Tensor Q, bool KeysAttended) RotateWithKeys(Tensor q, Tensor k, ModelStep step, LayerKvCache cache, RotaryEmbedding rotation)
    {
        var rotary = step.Rotary(rotation);
        if (cache.Bits == 16 && rotary.TryRotateIntoOnCuda(q, k, cache.AttendedKeys(), step.Batch.WriteSlots!)) return (q, true);
        return (rotary.RotateQueries(q), false);
    }

    /// <summary>
    /// The query heads layer <paramref name="layer"/> (input <paramref name="hidden"/> [B,T,·]) computes in this step, when
    /// DejaVu's selection is known before attention (<see cref="ISparsityStep.HeadsAhead"/>) and the step can skip the others'
    /// queries and attention: int64 [B, 1, k]; else null (every head). Decode steps of at most
    /// <see cref="KeptHeadsLargestBatch"/> rows over one cache on the computing device whose policy needs no attention
    /// probabilities (H2O observes every head's) and that stores keys rotated.
    /// </summary>
    public static Tensor? KeptHeads(int layer, Tensor hidden, ModelStep step, LayerState state)
    {
        if (step.Sparsity is not { } sparsity || hidden.size(1) != 1 || hidden.size(0) > KeptHeadsLargestBatch) return null;
        if (state.Cache is not { } cache) return null;
        if (cache.ObservesAttention || cache.KeysAtCacheIndex || cache.Device.type != hidden.device_type) return null;
        return sparsity.HeadsAhead(layer);
    }

    /// <summary>DejaVu is a batch-1 method: past the fused decode attention's few rows the kept heads' keys and values are gathered
    /// (a copy of k/H of the cache per layer), which costs more than attending with every head.</summary>
    const int KeptHeadsLargestBatch = 4;

    /// <summary>The fused [q | k | v] projection <paramref name="qkv"/> of <paramref name="x"/> [B, T, in] for a step over the kept
    /// heads whose <see cref="HeadColumns"/> are <paramref name="columns"/>: the kept heads' query rows (gathered), [B, T, k, head_dim],
    /// and every key and value row (keys and values of every head are cached, so no later token reads a missing entry; one
    /// contiguous block of W, read by the dense GEMV), [B, T, 2·KvHeads, head_dim] — two tensors, not copied into one.</summary>
    public static (Tensor Queries, Tensor KeysAndValues) KeptQkv(Linear qkv, Tensor x, Tensor columns, AttentionSettings s)
    {
        long b = x.size(0), t = x.size(1), d = s.HeadDim, q = s.Heads * d, kv = 2 * s.KvHeads * d;
        var queries = qkv.ForwardRows(x, columns).view(b, t, columns.size(-1) / d, d);
        var keysAndValues = new Linear(qkv.Weight.narrow(0, q, kv), qkv.Bias?.narrow(0, q, kv)).Forward(x).view(b, t, 2 * s.KvHeads, d);
        return (queries, keysAndValues);
    }

    /// <summary>
    /// Attention of the kept query <paramref name="heads"/> only (int64 [B, 1, k], from <see cref="KeptHeads"/>): q [B,1,k,D],
    /// k and v [B,1,Hkv,D] of every KV head (all cached); returns the kept heads' outputs [B,1,k·D]. Under GQA kept head h reads
    /// KV head h / G.
    /// </summary>
    public static Tensor ForwardKept(Tensor q, Tensor k, Tensor v, Tensor heads, ModelStep step, LayerState state, AttentionSettings s) =>
        Forward(q, k, v, step, state.Cache!, s, null, state.Cache!.DType, heads);

    /// <summary>residual + o_proj of the kept heads' outputs <paramref name="attended"/> [B,T,k·D] (their
    /// <see cref="HeadColumns"/>: <paramref name="columns"/>): only their column blocks W_out[:, h·D:(h+1)·D] are read.</summary>
    public static Tensor ProjectKept(Linear output, Tensor attended, Tensor columns, Tensor residual, AttentionSettings s) =>
        output.ForwardColumnsAdd(attended, columns, residual, s.HeadDim);

    /// <summary>Kept heads' columns h·D … h·D + D − 1 (their query rows of W_qkv, their column blocks of W_out), per kept head in
    /// order: int64 [B, T, k·D] for <paramref name="heads"/> [B, T, k]. A step computes them once a layer, in one kernel (the
    /// offsets 0 … D − 1 made once a step).</summary>
    public static Tensor HeadColumns(Tensor heads, ModelStep step, AttentionSettings s) =>
        torch.add(step.Offsets(s.HeadDim, heads.device), heads.unsqueeze(-1), alpha: s.HeadDim).flatten(2);

    /// <summary>
    /// residual + o_proj(<paramref name="attended"/> [B,T,H·D]): DejaVu's head sparsity (Liu et al. 2023) when the step selects heads — the
    /// output of a skipped head counts as zero, so only the kept heads' column blocks W_out[:, h·D:(h+1)·D] are read (gathered
    /// columns, as the sparse MLP's down-projection). Keys and values of every head were cached by <see cref="Forward(Tensor, Tensor, Tensor, ModelStep, LayerState, AttentionSettings, RotaryEmbedding?, bool)"/>.
    /// </summary>
    public static Tensor Project(Linear output, Tensor attended, Tensor residual, int layer, ModelStep step, AttentionSettings s)
    {
        long b = attended.size(0), t = attended.size(1);
        var perHead = attended.reshape(b, t, s.Heads, s.HeadDim);
        if (step.Sparsity?.Heads(layer, () => perHead) is not { } heads) return output.ForwardAdd(attended, residual);
        var kept = perHead.gather(2, heads.unsqueeze(-1).expand(b, t, heads.size(2), s.HeadDim)); // [B,T,k,D]
        return ProjectKept(output, kept.flatten(2), HeadColumns(heads, step, s), residual, s);
    }

    /// <summary>
    /// A step whose row ranges belong to caches of different configurations: each range attends through its own cache, as a
    /// step over that cache alone would. Keys arrive unrotated when some cache keeps them at their cache index; a range whose
    /// cache stores them rotated gets them rotated here, at its positions.
    /// </summary>
    static Tensor Segmented(Tensor q, Tensor k, Tensor v, IReadOnlyList<StepSegment> segments, int layer, AttentionSettings s,
        RotaryEmbedding? cachedKeyRotation)
    {
        var outputs = new Tensor[segments.Count];
        for (int i = 0; i < segments.Count; i++)
        {
            var (start, rows, caches, step) = (segments[i].Start, segments[i].Rows, segments[i].Cache, segments[i].Step);
            var cache = caches[layer];
            var keys = k.narrow(0, start, rows);
            RotaryEmbedding? rotation = null;
            if (cachedKeyRotation is not null && cache.KeysAtCacheIndex) rotation = cachedKeyRotation;
            else if (cachedKeyRotation is not null) keys = step.Rotary(cachedKeyRotation).RotateCopy(keys); // cos/sin gathered once a step
            outputs[i] = Forward(q.narrow(0, start, rows), keys, v.narrow(0, start, rows), step, cache, s, rotation);
        }
        return torch.cat(outputs, 0);
    }

    /// <summary>
    /// FlexGen's CPU delegation (§1.1.4): the cache lives on another device than the computation (offloading puts it in host
    /// memory), so attention runs there in fp32 — only this step's q, k, v travel to it and the output comes back, instead of
    /// the whole cache crossing to the GPU.
    /// </summary>
    static Tensor WhereTheCacheLives(Tensor q, Tensor k, Tensor v, ForwardBatch batch, LayerKvCache cache, AttentionSettings s,
        RotaryEmbedding? cachedKeyRotation)
    {
        var home = cache.Device;
        var there = new ForwardBatch
        {
            InputIds = batch.InputIds, Positions = batch.Positions.to(home), RealTokens = batch.RealTokens, HasPadding = batch.HasPadding,
            MaxPosition = batch.MaxPosition, LastPositionOnly = batch.LastPositionOnly,
            ModelPositions = batch.ModelPositions.to(home), MaxModelPosition = batch.MaxModelPosition,
        };
        var output = Forward(q.to(ScalarType.Float32, home), k.to(cache.DType, home), v.to(cache.DType, home), new ModelStep(there), cache, s,
            cachedKeyRotation, ScalarType.Float32);
        return output.to(q.dtype, q.device);
    }

    /// <param name="computeType">The type attention computes in: the cache's, or fp32 for delegated attention (keys and values
    /// are then widened as they are read).</param>
    /// <param name="kept">The kept query heads [B,1,k] of a head-sparse decode step (q holds theirs only), or null.</param>
    /// <param name="rotateQueries">q arrived unrotated (<see cref="RotatesQueries"/>).</param>
    static Tensor Forward(Tensor q, Tensor k, Tensor v, ModelStep step, LayerKvCache cache, AttentionSettings s,
        RotaryEmbedding? cachedKeyRotation, ScalarType computeType, Tensor? kept = null, bool rotateQueries = false)
    {
        bool keysAttended = false;
        if (rotateQueries) (q, keysAttended) = RotateWithKeys(q, k, step, cache, cachedKeyRotation!);
        var batch = step.Batch;
        long b = q.size(0), t = q.size(1);
        int h = (int)q.size(2), hkv = s.KvHeads, g = s.Groups, d = s.HeadDim;
        if (s.QueryScale != 1.0) q = q * s.QueryScale;

        cache.Update(k.transpose(1, 2), v.transpose(1, 2), batch.Positions, batch.HasPadding, batch.WriteSlots);
        var qh = q.transpose(1, 2); // [B,H,T,D]
        if (qh.dtype != computeType) qh = qh.to(computeType); // queries take the cache's type (bf16 under autocast)
        if (batch.WriteSlots is not null)
        {
            var result = StaticShapes(qh, k, step, cache, s, cachedKeyRotation, kept, keysAttended);
            EndStep(cache, cachedKeyRotation);
            return result;
        }
        int length = cache.Length;
        var keys = cachedKeyRotation is null ? cache.ActiveKeys : KeysAtCacheIndex(cache, cachedKeyRotation, step, k, null).narrow(2, 0, length);
        var values = cache.ActiveValues;
        if (keys.dtype != computeType) (keys, values) = (keys.to(computeType), values.to(computeType));
        bool windowMatters = s.SlidingWindow > 0 && batch.MaxPosition + 1 > s.SlidingWindow;
        Tensor output; // [B,H,T,D]
        if (kept is not null)
        {
            // The kept heads' own KV heads, one per query head; one query each (a decode step).
            var kv = KvHeadOf(kept, s);
            var mask = cache.HasHoles || windowMatters ? PerKeptHead(Mask(batch, cache.ActivePositions, s), kv) : null;
            output = F.scaled_dot_product_attention(qh, PerKeptHead(keys, kv), PerKeptHead(values, kv), mask);
        }
        else if (cache.ObservesAttention)
        {
            // Blocks of queries at a time, so that a long prefill never holds all of [B,H,T,L] in fp32 at once.
            var mask = Mask(batch, cache.ActivePositions, s);
            var blocks = new List<Tensor>();
            for (long start = 0; start < t; start += ProbabilityBlock)
            {
                long n = Math.Min(ProbabilityBlock, t - start);
                using var blockScope = torch.NewDisposeScope();
                var block = Explicit(qh.narrow(2, start, n), keys, values, mask.narrow(2, start, n), s, out var probabilities);
                // Padding queries attend somewhere only to stay finite: policies must not count what they attend to.
                if (batch.HasPadding) probabilities = probabilities.masked_fill(batch.Positions.narrow(1, start, n).lt(0).unsqueeze(1).unsqueeze(-1), 0);
                cache.Observe(probabilities);
                blocks.Add(block.MoveToOuterDisposeScope());
            }
            output = blocks.Count == 1 ? blocks[0] : torch.cat(blocks, 2);
        }
        else if (!cache.HasHoles && !windowMatters && t == 1)
        {
            // Decode without holes: every cached entry is visible; no mask, so SDPA may use its fastest kernel (Tern's on the CPU).
            var qg = qh.reshape(b, hkv, g, d);
            output = (Interop.FusedKernels.TryUnmaskedDecodeAttention(qg, keys, values, out var fused) ? fused
                : F.scaled_dot_product_attention(qg, keys, values)).reshape(b, h, 1, d);
        }
        else if (!cache.HasHoles && !windowMatters && length == t)
        {
            // First chunk without padding: plain causal attention.
            var kx = g == 1 ? keys : keys.repeat_interleave(g, 1);
            var vx = g == 1 ? values : values.repeat_interleave(g, 1);
            output = Interop.FusedKernels.TryWidenedCausalAttention(qh, kx, vx, out var widened) ? widened
                : F.scaled_dot_product_attention(qh, kx, vx, is_casual: true);
        }
        else
        {
            var mask = Mask(batch, cache.ActivePositions, s); // [B,Hkv,T,L]
            var qg = qh.reshape(b, hkv, g * t, d);
            var mg = mask.unsqueeze(2).expand(b, hkv, g, t, length).reshape(b, hkv, g * t, length);
            output = F.scaled_dot_product_attention(qg, keys, values, mg).reshape(b, h, t, d);
        }
        EndStep(cache, cachedKeyRotation);
        return output.transpose(1, 2).reshape(b, t, h * d);
    }

    /// <summary>
    /// The layer's attention is done: the cache's policy may evict. When it kept its entries by moving a block down
    /// (<see cref="LayerKvCache.KeepPrefixAndSuffix"/>, StreamingLLM's sinks + window) and keys sit at their cache index, the
    /// moved keys are rotated at their new index now, from the stored keys: slot = index there (no holes), so one rotation by
    /// a slice of the tables replaces sorting ranks and gathering a table row per slot, and the next step rotates only its
    /// own key (it replays as the plain graph step). Bit-identical to rotating every slot again on the CPU; on CUDA (16-bit
    /// entries) one kernel rotates the block with the rounding of the step's own rotary kernel (once, from fp32), where the
    /// composite rounds twice.
    /// </summary>
    static void EndStep(LayerKvCache cache, RotaryEmbedding? cachedKeyRotation)
    {
        cache.EndStep();
        if (cache.TakeMovedKeys() is not { } moved || cachedKeyRotation is null) return;
        if (cache.Bits == 16 && cachedKeyRotation.TryRotateSlotsOnCuda(cache.AttendedKeys(), cache.Keys, moved.Start, moved.Count)) return;
        using var scope = torch.NewDisposeScope();
        cache.AttendedKeys().narrow(2, moved.Start, moved.Count)
            .copy_(cachedKeyRotation.RotateRange(cache.StoredKeys(moved.Start, moved.Count), moved.Start));
    }

    /// <summary>
    /// A step with static shapes (CUDA-graph capture): attends over every slot the cache can hold at such a step
    /// (<see cref="LayerKvCache.StaticStepSlots"/>), the mask hiding empty slots and those not yet written. The fused
    /// decode-attention kernel serves small batches; masked matrix products the rest. Returns [B,T,H·D].
    /// </summary>
    /// <remarks>Evicting policies run here too (their eviction steps run eagerly, outside any graph): keys stored unrotated are
    /// rotated at their cache index over every slot, and a policy that observes attention gets the probabilities of every slot
    /// (zero where masked).</remarks>
    static Tensor StaticShapes(Tensor qh, Tensor k, ModelStep step, LayerKvCache cache, AttentionSettings s, RotaryEmbedding? cachedKeyRotation,
        Tensor? kept, bool keysAttended)
    {
        var batch = step.Batch;
        long b = qh.size(0), t = qh.size(2);
        int h = (int)qh.size(1), hkv = s.KvHeads, g = s.Groups, d = s.HeadDim;
        int slots = cache.StaticStepSlots((int)t);
        var keys = (cachedKeyRotation is null ? cache.Keys : KeysAtCacheIndex(cache, cachedKeyRotation, step, k, batch.WriteSlots, keysAttended)).narrow(2, 0, slots);
        var (values, positions) = (cache.Values.narrow(2, 0, slots), cache.Positions.narrow(2, 0, slots));
        // Keys rotated at their cache index (StreamingLLM) are laid out as the stored ones, and masks use original positions.
        if (t == 1 && !cache.ObservesAttention && Interop.FusedKernels.TryDecodeAttention(qh, keys, values,
                positions, batch.Positions, s.SlidingWindow, 1.0 / Math.Sqrt(d), out var fused, kept?.flatten(1), g))
            return fused;
        if (kept is not null)
        {
            var kv = KvHeadOf(kept, s);
            var visible = PerKeptHead(Mask(batch, positions, s), kv);
            var selected = MatmulAttention(qh, PerKeptHead(keys, kv), PerKeptHead(values, kv), visible, d);
            return selected.transpose(1, 2).reshape(b, t, h * d);
        }
        Tensor output; // [B,H,T,D]
        if (cache.ObservesAttention)
        {
            output = Explicit(qh, keys, values, Mask(batch, positions, s), s, out var probabilities);
            if (batch.HasPadding) probabilities = probabilities.masked_fill(batch.Positions.lt(0).unsqueeze(1).unsqueeze(-1), 0);
            cache.Observe(probabilities);
            return output.transpose(1, 2).reshape(b, t, h * d);
        }
        Tensor mask;
        if (cache.Policy.AppendOnly && step.SharedMask is { } shared && shared.Window == s.SlidingWindow)
            mask = shared.Mask;
        else
        {
            var m = Mask(batch, positions, s); // [B,Hkv,T,slots]
            mask = m.unsqueeze(2).expand(b, hkv, g, t, slots).reshape(b, hkv, g * t, slots);
            if (cache.Policy.AppendOnly) step.SharedMask = (s.SlidingWindow, mask.MoveToOuterDisposeScope()); // outlives this layer's scope
        }
        output = MatmulAttention(qh.reshape(b, hkv, g * t, d), keys, values, mask, d);
        return output.reshape(b, h, t, d).transpose(1, 2).reshape(b, t, h * d);
    }

    /// <summary>
    /// StreamingLLM's keys at their cache index (stored unrotated; index = rank among the row's occupied slots), every slot
    /// [B,Hkv,Capacity,D]: rotated whole when the cache marks them stale, else only this step's keys, <paramref name="newKeys"/>,
    /// as stored (at <paramref name="slots"/> in a static-shape step, else at the end) — appending never changes an earlier
    /// entry's rank, so the others are already right. A new key's rank is the number of entries its row held before it: the
    /// step's model position, whose rotation the step gathers once for every layer. <paramref name="newKeys"/> [B,T,Hkv,D] is a
    /// view of the fused projection that the cache has just stored and nothing reads again: with 16-bit entries (stored as they
    /// came) CUDA rotates it where it lies, one kernel, instead of reading the keys back and rotating a copy. With
    /// <paramref name="keysAttended"/> a static decode step's kernel has written them already (<see cref="RotateWithKeys"/>).
    /// </summary>
    static Tensor KeysAtCacheIndex(LayerKvCache cache, RotaryEmbedding rotation, ModelStep step, Tensor newKeys, Tensor? slots,
        bool keysAttended = false)
    {
        long tokens = newKeys.size(1);
        var attended = cache.AttendedKeys();
        if (cache.AttendedKeysStale)
        {
            // Slots in use only: the free ones are masked until a step writes (and rotates) its own.
            long length = cache.Length;
            var ranks = cache.Positions.narrow(2, 0, length).ge(0).to(ScalarType.Int64).cumsum(-1) - 1;
            attended.narrow(2, 0, length).copy_(rotation.RotateCached(cache.Keys.narrow(2, 0, length), ranks, cache.Capacity));
            cache.AttendedKeysStale = false;
            return attended;
        }
        if (keysAttended) return attended; // already rotated into their slot, with the queries (RotateWithKeys)
        long start = cache.Length - tokens;
        Tensor rotated; // [B,Hkv,T,D]
        if (cache.Bits == 16 && step.Rotary(rotation).TryRotateInPlaceOnCuda(newKeys))
            rotated = newKeys.transpose(1, 2);
        else
        {
            var stored = slots is null ? cache.Keys.narrow(2, start, tokens) : cache.Keys.index_select(2, slots);
            rotated = step.Rotary(rotation).RotateCopy(stored.transpose(1, 2)).transpose(1, 2);
        }
        if (slots is null) attended.narrow(2, start, tokens).copy_(rotated);
        else attended.index_copy_(2, slots, rotated);
        return attended;
    }

    // Query head h reads KV head h / G: [B, k] for kept heads [B, 1, k].
    static Tensor KvHeadOf(Tensor kept, AttentionSettings s) => kept.flatten(1).div(s.Groups, rounding_mode: RoundingMode.floor);

    // x [B, Hkv, L, ·] (keys, values, masks) as one row per kept query head: [B, k, L, ·].
    static Tensor PerKeptHead(Tensor x, Tensor kvHeads) =>
        x.gather(1, kvHeads.view(kvHeads.size(0), kvHeads.size(1), 1, 1).expand(kvHeads.size(0), kvHeads.size(1), x.size(2), x.size(3)));

    /// <summary>softmax(q·kᵀ/√d, masked)·v through batched matrix products with an fp32 softmax. For masked decode steps it
    /// beat SDPA's masked kernel at every batch size on an H100 (bench/README.md), so static-shape steps use it.</summary>
    static Tensor MatmulAttention(Tensor q, Tensor keys, Tensor values, Tensor mask, int d)
    {
        var scores = (q * (1.0 / Math.Sqrt(d))).matmul(keys.transpose(2, 3)).masked_fill(mask.logical_not(), double.NegativeInfinity);
        // A row that sees no key (a free row of a serving pool's static step) attends to nothing rather than to NaN.
        return F.softmax(scores, -1, ScalarType.Float32).nan_to_num_(0.0).to(values.dtype).matmul(values);
    }

    /// <summary>Visibility [B,Hkv,T,L]: key at original position p_k is visible to a query at p_q when 0 ≤ p_k ≤ p_q and
    /// p_q − p_k &lt; window. Padding queries (p_q = −1) see every occupied slot, so their rows are never empty (no NaN).</summary>
    static Tensor Mask(ForwardBatch batch, Tensor keyPositions, AttentionSettings s)
    {
        var kp = keyPositions.unsqueeze(2);                      // [B,Hkv,1,L]
        var qp = batch.Positions.unsqueeze(1).unsqueeze(-1);     // [B,1,T,1]
        var occupied = kp.ge(0);
        var visible = occupied & kp.le(qp);
        if (s.SlidingWindow > 0) visible &= (qp - kp).lt(s.SlidingWindow);
        return visible | (occupied & qp.lt(0));
    }

    /// <summary>softmax(q·kᵀ/√d + mask)·v with fp32 softmax; returns probabilities as [B,H,T,L] fp32.</summary>
    static Tensor Explicit(Tensor qh, Tensor keys, Tensor values, Tensor mask, AttentionSettings s, out Tensor probabilities)
    {
        long b = qh.size(0), t = qh.size(2);
        int hkv = s.KvHeads, g = s.Groups, d = s.HeadDim;
        long length = keys.size(2);
        var qg = qh.reshape(b, hkv, g * t, d);
        var scores = qg.matmul(keys.transpose(2, 3)).to(ScalarType.Float32) * (1.0 / Math.Sqrt(d));
        var mg = mask.unsqueeze(2).expand(b, hkv, g, t, length).reshape(b, hkv, g * t, length);
        scores = scores.masked_fill(mg.logical_not(), double.NegativeInfinity);
        var probs = F.softmax(scores, -1).nan_to_num_(0.0); // as MatmulAttention: a row that sees no key attends to nothing
        probabilities = probs.view(b, s.Heads, t, length);
        return probs.to(values.dtype).matmul(values).reshape(b, s.Heads, t, d);
    }
}
