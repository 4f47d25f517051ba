namespace Tern.Runtime;

/// <summary>
/// An option by what it sets rather than by how a front end spells it: <see cref="OptionException"/> messages name options
/// through these, and the CLI renders them as its flags, the server as its request fields. The neutral name
/// (<see cref="Name"/>) is the options property that sets the option.
/// </summary>
public sealed class TernOption
{
    TernOption(string name) => Name = name;

    /// <summary>The options property that sets the option, e.g. <c>KvPolicyOptions.Budget</c>.</summary>
    public string Name { get; }

    /// <inheritdoc />
    public override string ToString() => Name;

    // Plain strings rather than nameof: Runtime stays below the folders that define the options.

    /// <summary>The KV-cache policy's name.</summary>
    public static readonly TernOption KvPolicy = new("KvPolicyOptions.Policy");
    /// <summary>The KV-cache budget (a token count or a ratio).</summary>
    public static readonly TernOption KvBudget = new("KvPolicyOptions.Budget");
    /// <summary>Attention sinks of the sink policy.</summary>
    public static readonly TernOption KvSink = new("KvPolicyOptions.Sinks");
    /// <summary>H2O's recent window.</summary>
    public static readonly TernOption KvRecent = new("KvPolicyOptions.Recent");
    /// <summary>Bits per cached element.</summary>
    public static readonly TernOption KvBits = new("KvPolicyOptions.Bits");
    /// <summary>Tokens the cache may overrun its budget by before it evicts.</summary>
    public static readonly TernOption KvEvictEvery = new("KvPolicyOptions.EvictEvery");

    /// <summary>Most tokens generated per sequence.</summary>
    public static readonly TernOption MaxNewTokens = new("GenerationOptions.MaxNewTokens");
    /// <summary>Prompt tokens run per prefill step.</summary>
    public static readonly TernOption PrefillChunk = new("GenerationOptions.PrefillChunk");
    /// <summary>Sampling temperature.</summary>
    public static readonly TernOption Temperature = new("GenerationOptions.Temperature");
    /// <summary>Top-k sampling.</summary>
    public static readonly TernOption TopK = new("GenerationOptions.TopK");
    /// <summary>Nucleus sampling mass.</summary>
    public static readonly TernOption TopP = new("GenerationOptions.TopP");
    /// <summary>Repetition penalty.</summary>
    public static readonly TernOption RepetitionPenalty = new("GenerationOptions.RepetitionPenalty");
    /// <summary>Most likely tokens reported per generated position.</summary>
    public static readonly TernOption Logprobs = new("GenerationOptions.Logprobs");
    /// <summary>Most likely tokens reported per prompt position.</summary>
    public static readonly TernOption PromptLogprobs = new("GenerationOptions.PromptLogprobs");

    /// <summary>Sequences a serving engine decodes together.</summary>
    public static readonly TernOption MaxBatchSize = new("ServingOptions.MaxBatchSize");
    /// <summary>KV-cache tokens the running requests may reserve together.</summary>
    public static readonly TernOption KvBudgetTokens = new("ServingOptions.KvBudgetTokens");
    /// <summary>Requests that may wait for a slot.</summary>
    public static readonly TernOption MaxQueue = new("ServingOptions.MaxQueue");
    /// <summary>Longest prompt a request may send.</summary>
    public static readonly TernOption MaxPromptTokens = new("ServingOptions.MaxPromptTokens");
    /// <summary>Most new tokens a request may ask for.</summary>
    public static readonly TernOption ServingMaxNewTokens = new("ServingOptions.MaxNewTokens");
    /// <summary>Prompt tokens prefilled per serving step.</summary>
    public static readonly TernOption MaxPrefillTokensPerStep = new("ServingOptions.MaxPrefillTokensPerStep");

    /// <summary>Folder for the disk tier of offloading.</summary>
    public static readonly TernOption OffloadDirectory = new("OffloadOptions.Directory");
    /// <summary>The offloading policy (running a model offloaded at all).</summary>
    public static readonly TernOption Offload = new("OffloadOptions.Policy");
    /// <summary>Tokens per perplexity window.</summary>
    public static readonly TernOption PerplexityWindow = new("PerplexityOptions.Window");
    /// <summary>How far each perplexity window moves.</summary>
    public static readonly TernOption PerplexityStride = new("PerplexityOptions.Stride");
    /// <summary>Token that starts every training sequence.</summary>
    public static readonly TernOption StartToken = new("TrainerOptions.StartToken");
    /// <summary>InRank's low-rank MLP training itself.</summary>
    public static readonly TernOption InRank = new("TrainerOptions.InRank");
    /// <summary>InRank's initial rank r0.</summary>
    public static readonly TernOption InRankInitialRank = new("InRankOptions.InitialRank");
    /// <summary>InRank's buffer b of live components past the rank.</summary>
    public static readonly TernOption InRankBuffer = new("InRankOptions.Buffer");
    /// <summary>InRank's explained-variance threshold α.</summary>
    public static readonly TernOption InRankThreshold = new("InRankOptions.Threshold");
    /// <summary>Forward passes before InRank's first rank check.</summary>
    public static readonly TernOption InRankWarmup = new("InRankOptions.Warmup");
    /// <summary>Forward passes between InRank's rank checks.</summary>
    public static readonly TernOption InRankCheckEvery = new("InRankOptions.CheckEvery");
    /// <summary>Optimizer steps of InRank's rank discovery.</summary>
    public static readonly TernOption InRankStage1Steps = new("InRankOptions.Stage1Steps");
    /// <summary>Scale of InRank's initial factors.</summary>
    public static readonly TernOption InRankInitScale = new("InRankOptions.InitScale");
    /// <summary>InRank's Rmax as a fraction of the full rank.</summary>
    public static readonly TernOption InRankMaxRankFraction = new("InRankOptions.MaxRankFraction");
    /// <summary>The rank of the fixed-rank low-rank control.</summary>
    public static readonly TernOption InRankFixedRank = new("InRankOptions.FixedRank");
    /// <summary>Fraction of MLP neurons a sparse decode step computes (DejaVu).</summary>
    public static readonly TernOption SparsityMlp = new("SparsityOptions.MlpActive");
    /// <summary>Fraction of attention heads a sparse decode step projects (DejaVu).</summary>
    public static readonly TernOption SparsityHeads = new("SparsityOptions.HeadsActive");
    /// <summary>DejaVu's sparsity as one specification (<c>mlp=0.1,rule=predicted</c>).</summary>
    public static readonly TernOption Sparsity = new("SparsityOptions");

    /// <summary>Bits per compressed weight (GPTQ, RTN, SparseGPT's joint quantization).</summary>
    public static readonly TernOption CompressBits = new("CompressionOptions.Bits");
    /// <summary>Input columns sharing one quantization grid.</summary>
    public static readonly TernOption CompressGroupSize = new("CompressionOptions.GroupSize");
    /// <summary>Hessian damping of GPTQ and SparseGPT.</summary>
    public static readonly TernOption CompressDamping = new("CompressionOptions.Damping");
    /// <summary>Fraction of weights SparseGPT sets to zero.</summary>
    public static readonly TernOption CompressSparsity = new("CompressionOptions.Sparsity");
    /// <summary>Calibration sequences of GPTQ and SparseGPT.</summary>
    public static readonly TernOption CalibrationSamples = new("CompressionOptions.CalibrationSamples");
    /// <summary>Tokens per calibration sequence.</summary>
    public static readonly TernOption CalibrationLength = new("CompressionOptions.CalibrationLength");
    /// <summary>Vectors of a soft prompt.</summary>
    public static readonly TernOption SoftPromptTokens = new("SoftPromptTrainingOptions.Tokens");
    /// <summary>A soft prompt file.</summary>
    public static readonly TernOption SoftPromptFile = new("SoftPrompt.File");
}
