using Tern.Models;
using static TorchSharp.torch;

namespace Tern.Training;

/// <summary>Model FLOPs of training, and the peak of known cards, for model FLOPs utilisation (MFU).</summary>
public static class ModelFlops
{
    /// <summary>
    /// Training FLOPs per token, PaLM's count (Chowdhery et al. 2022, appendix B): 6·N + 12·L·d_attn·T, where N counts the
    /// weights of matrix products (the embedding lookup is not one; a tied LM head is) and the second term the attention
    /// scores and weighted sums over a T-token sequence, forward and backward. Recomputation and masking are not credited.
    /// </summary>
    public static double TrainingPerToken(ModelInfo info, int sequenceLength, bool tiedEmbeddings)
    {
        double matmulWeights = info.ParameterCount - (tiedEmbeddings ? 0 : (double)info.VocabSize * info.HiddenSize);
        return 6 * matmulWeights + 12.0 * info.Layers * info.Heads * info.HeadDim * sequenceLength;
    }

    /// <summary>Dense peak FLOP/s of known NVIDIA data-centre cards for matrix products in <paramref name="type"/> (fp32 without
    /// TF32, as libtorch multiplies by default); null for other devices.</summary>
    public static double? PeakPerSecond(string deviceName, ScalarType type)
    {
        bool half = type is ScalarType.BFloat16 or ScalarType.Float16;
        // Datasheet values (dense, no sparsity): H100 SXM and H200 989 TFLOP/s bf16, 67 fp32; H100 PCIe 756 / 51; A100 312 / 19.5.
        (string Marker, double Half, double Single)[] cards =
        {
            ("H200", 989.4e12, 66.9e12), ("H100 PCIe", 756.0e12, 51.2e12), ("H100", 989.4e12, 66.9e12), ("A100", 312e12, 19.5e12),
        };
        foreach (var card in cards)
            if (deviceName.Contains(card.Marker, StringComparison.OrdinalIgnoreCase)) return half ? card.Half : card.Single;
        return null;
    }
}
