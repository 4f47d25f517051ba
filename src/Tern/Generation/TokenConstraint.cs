using static TorchSharp.torch;

namespace Tern.Generation;

/// <summary>
/// A rule on which tokens a sequence may produce (a grammar, a JSON schema): the sampler asks each sequence's
/// <see cref="ITokenMask"/> for the allowed tokens before every draw and tells it the token drawn. The sampler knows nothing
/// of the rule itself; <see cref="Generator"/> and the serving engine both honour it through the sampler.
/// </summary>
public interface ITokenConstraint
{
    /// <summary>A fresh per-sequence state. <paramref name="stopIds"/> are the tokens that end the sequence (the mask allows
    /// them once the rule is satisfied); <paramref name="vocab"/> is the model's vocabulary size (the mask's length).</summary>
    ITokenMask Start(IReadOnlyCollection<int> stopIds, int vocab);
}

/// <summary>One sequence's state under an <see cref="ITokenConstraint"/>.</summary>
public interface ITokenMask
{
    /// <summary>The tokens allowed next, bool [vocab] on <paramref name="device"/> (the caller does not dispose it), or null
    /// when any token is. <paramref name="tokensLeft"/> counts this one: a rule may use it to finish within the budget.</summary>
    Tensor? Allowed(Device device, int tokensLeft);

    /// <summary>Advances past the token drawn.</summary>
    void Accept(int token);
}
