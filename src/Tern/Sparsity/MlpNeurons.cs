using Tern.Models;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Tern.Sparsity;

/// <summary>
/// Which MLP neurons fire for a layer's tokens, recomputed from the layer's input x and its head outputs with the layer's own
/// weights: h = x + o_proj(heads) is the MLP's residual input, m its normalised form, and a neuron fires when its ReLU is
/// non-zero — OPT: relu(fc1·m) &gt; 0; a gated relu Llama: relu(gate·m) &gt; 0 (its rows of gate/up and column of down are then
/// the only ones the token needs).
/// </summary>
internal abstract class MlpNeurons
{
    /// <summary>The recomputation for <paramref name="model"/>; refuses models without a ReLU MLP (<see cref="ModelIdentity.RequireReluMlp"/>).</summary>
    public static MlpNeurons For(CausalLanguageModel model)
    {
        ModelIdentity.Of(model.Config).RequireReluMlp();
        var c = model.Config;
        return c.ModelType == "opt"
            ? new Opt(c.GetBool("do_layer_norm_before") ?? true)
            : new GatedLlama(c.GetDouble("rms_norm_eps") ?? 1e-6, c.RequireInt("intermediate_size"));
    }

    /// <summary>The MLP's input after its norm, [.., hidden], from layer input <paramref name="x"/> and the heads' outputs
    /// <paramref name="heads"/> [.., H·D] (concatenated in head order, as the output projection reads them).</summary>
    public abstract Tensor MlpInput(PartWeights w, Tensor x, Tensor heads);

    /// <summary>The neurons' pre-activations (fc1·m + b, or gate·m + b), [.., intermediate].</summary>
    public abstract Tensor PreActivation(PartWeights w, Tensor m);

    /// <summary>The firing mask, bool [.., intermediate].</summary>
    public Tensor Active(PartWeights w, Tensor x, Tensor heads) => PreActivation(w, MlpInput(w, x, heads)).gt(0);

    sealed class Opt(bool preNorm) : MlpNeurons
    {
        const double Eps = 1e-5; // OPT's LayerNorm epsilon, as OptModel

        public override Tensor MlpInput(PartWeights w, Tensor x, Tensor heads)
        {
            var h = x + F.linear(heads, w["self_attn.out_proj.weight"], w.Optional("self_attn.out_proj.bias"));
            // Post-norm OPT (350m) normalises after the residual sum and feeds the MLP the normalised stream directly.
            if (!preNorm) return F.layer_norm(h, new long[] { h.shape[^1] }, w["self_attn_layer_norm.weight"], w["self_attn_layer_norm.bias"], Eps);
            return F.layer_norm(h, new long[] { h.shape[^1] }, w["final_layer_norm.weight"], w["final_layer_norm.bias"], Eps);
        }

        public override Tensor PreActivation(PartWeights w, Tensor m) => F.linear(m, w["fc1.weight"], w.Optional("fc1.bias"));
    }

    sealed class GatedLlama(double eps, int intermediate) : MlpNeurons
    {
        public override Tensor MlpInput(PartWeights w, Tensor x, Tensor heads)
        {
            var h = x + F.linear(heads, w["self_attn.o_proj.weight"], w.Optional("self_attn.o_proj.bias"));
            var hf = h.to(ScalarType.Float32); // RMSNorm statistics in fp32, as transformers' Llama
            var normed = (hf * (hf.square().mean(new long[] { -1 }, keepdim: true) + eps).rsqrt()).to(h.dtype);
            return normed * w["post_attention_layernorm.weight"];
        }

        public override Tensor PreActivation(PartWeights w, Tensor m)
        {
            // gate|up are fused ([2I, hidden]): the gate is the first I rows.
            var bias = w.Optional("mlp.gate_up_proj.bias");
            return F.linear(m, w["mlp.gate_up_proj.weight"].narrow(0, 0, intermediate), bias?.narrow(0, 0, intermediate));
        }
    }
}
