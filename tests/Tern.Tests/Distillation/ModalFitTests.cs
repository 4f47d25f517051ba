using System.Numerics;
using Tern.Distillation;
using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Tests.Distillation;

/// <summary>Brief §1.10, fourth and fifth rows: exact recovery of an order-d modal filter, and the order sweep; plus the
/// stability guarantees of the fit and of a loaded bank.</summary>
public class ModalFitTests
{
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void AFilterThatIsAnOrderDModalSumIsRecoveredExactly(bool direct, bool realPole)
    {
        const int modes = 3, length = 256;
        var truth = DistillationTestData.RandomBank(channels: 4, modes, seed: 5, direct, realPole);
        using var scope = torch.NewDisposeScope();
        var filters = truth.Kernel(length);
        var fit = ModalFit.Fit(filters, new ModalFitOptions { Modes = modes, Iterations = 20, DirectTerm = direct });

        foreach (var e in fit.RelativeError) Assert.True(e < 1e-6, $"relative error {e}");
        Assert.True(DistillationTestData.RelativeError(fit.Filters.Kernel(length), filters) < 1e-6);
        for (int c = 0; c < 4; c++)
        {
            static IEnumerable<Complex> Sorted(IEnumerable<Complex> p) => p.OrderBy(z => z.Phase).ThenBy(z => z.Magnitude);
            var found = Sorted(fit.Filters.Poles.Skip(c * modes).Take(modes)).ToArray();
            var expected = Sorted(truth.Poles.Skip(c * modes).Take(modes)).ToArray();
            for (int n = 0; n < modes; n++) Assert.True((found[n] - expected[n]).Magnitude < 1e-6, $"filter {c} pole {n}: {found[n]} vs {expected[n]}");
        }

        // Kronecker: the Hankel rank is the real order, 2S (one less per real pole), plus one for a direct term (a pole at 0).
        int order = 2 * modes - (realPole ? 1 : 0) + (direct ? 1 : 0);
        foreach (var spectrum in HankelSpectrum.Compute(filters))
        {
            Assert.True(spectrum.Values[order] / spectrum.Values[0] < 1e-10, $"σ_d/σ_0 = {spectrum.Values[order] / spectrum.Values[0]}");
            Assert.Equal(order, spectrum.Order(1e-8));
        }
    }

    [Fact]
    public void ErrorFallsMonotonicallyWithTheOrderOnHyenaLikeFilters()
    {
        const int length = 256;
        using var scope = torch.NewDisposeScope();
        var filters = DistillationTestData.HyenaLikeFilters(channels: 4, length, seed: 6);
        var orders = new[] { 1, 2, 4, 8, 16 };
        var errors = ModalFit.Sweep(filters, orders, new ModalFitOptions { Iterations = 50 });
        var output = TestContext.Current.TestOutputHelper;
        for (int i = 0; i < orders.Length; i++)
            output?.WriteLine($"S = {orders[i],2}: relative ℓ2 per filter {string.Join(" ", errors[i].RelativeError.Select(e => e.ToString("E2")))}" +
                              $" (ERA init {string.Join(" ", errors[i].InitialRelativeError.Select(e => e.ToString("E2")))})");
        for (int c = 0; c < 4; c++)
        {
            for (int i = 1; i < orders.Length; i++)
                Assert.True(errors[i].RelativeError[c] <= errors[i - 1].RelativeError[c],
                    $"filter {c}: S = {orders[i]} error {errors[i].RelativeError[c]} > S = {orders[i - 1]} error {errors[i - 1].RelativeError[c]}");
            Assert.True(errors[^1].RelativeError[c] < 0.5 * errors[0].RelativeError[c], $"filter {c}: the sweep barely improves the fit");
            foreach (var e in errors) Assert.True(e.RelativeError[c] <= e.InitialRelativeError[c]);
        }

        var spectra = HankelSpectrum.Compute(filters);
        foreach (var spectrum in spectra)
        {
            output?.WriteLine($"Hankel σ_k/σ_0 at k = 2, 4, 8, 16, 32: {string.Join(" ", new[] { 2, 4, 8, 16, 32 }.Select(k => (spectrum.Values[k] / spectrum.Values[0]).ToString("E2")))}");
            for (int k = 1; k < spectrum.Values.Length; k++) Assert.True(spectrum.Values[k] <= spectrum.Values[k - 1]);
            var suggested = new[] { 1e-1, 1e-2, 1e-3, 1e-4 }.Select(spectrum.Order).ToArray();
            for (int i = 1; i < suggested.Length; i++) Assert.True(suggested[i] >= suggested[i - 1]);
        }
    }

    [Fact]
    public void AGrowingFilterIsFittedWithStablePolesOnly()
    {
        using var scope = torch.NewDisposeScope();
        var growing = torch.pow(1.02, torch.arange(128, ScalarType.Float64)).unsqueeze(0);   // h_t = 1.02^t: ERA finds |λ| = 1.02
        var options = new ModalFitOptions { Modes = 2, Iterations = 10, MaxRadius = 0.999 };
        var fit = ModalFit.Fit(growing, options);
        Assert.All(fit.Filters.Poles, p => Assert.True(p.Magnitude < options.MaxRadius, $"|λ| = {p.Magnitude}"));
    }

    [Fact]
    public void FitsAreReproducible()
    {
        using var scope = torch.NewDisposeScope();
        var filters = DistillationTestData.HyenaLikeFilters(channels: 2, length: 64, seed: 7);
        var options = new ModalFitOptions { Modes = 4, Iterations = 30, FiltersPerBatch = 1 };
        var (a, b) = (ModalFit.Fit(filters, options), ModalFit.Fit(filters, options));
        Assert.Equal(a.Filters.Poles, b.Filters.Poles);
        Assert.Equal(a.Filters.Residues, b.Filters.Residues);
        Assert.Equal(a.RelativeError, b.RelativeError);
    }

    [Fact]
    public void UnstableOrMissingPolesAreRefusedWithTheLayerAndFilterNamed()
    {
        var poles = new[] { new Complex(0.5, 0.1), new Complex(0.9, 0), new Complex(0.6, 0.7), new Complex(0.2, 0.2) };
        var residues = Enumerable.Repeat(Complex.One, 4).ToArray();
        Assert.NotNull(ModalFilters.Create("layer 3", 2, poles, residues));

        var unstable = (Complex[])poles.Clone();
        unstable[2] = new Complex(0.6, 0.8);   // |λ| = 1: stable only in the limit, refused
        var e = Assert.Throws<InvalidDataException>(() => ModalFilters.Create("layer 3", 2, unstable, residues));
        Assert.Contains("layer 3, filter 1: pole 0", e.Message);
        Assert.Contains("unstable", e.Message);

        var nan = (Complex[])poles.Clone();
        nan[3] = new Complex(double.NaN, 0);
        Assert.Contains("layer 3, filter 1: pole 1", Assert.Throws<InvalidDataException>(() => ModalFilters.Create("layer 3", 2, nan, residues)).Message);
        Assert.Contains("layer 3: the modal bank has no poles", Assert.Throws<InvalidDataException>(() => ModalFilters.Create("layer 3", 2, null, residues)).Message);
        Assert.Contains("layer 3: 3 residues for 4 poles", Assert.Throws<InvalidDataException>(() => ModalFilters.Create("layer 3", 2, poles, residues[..3])).Message);
        Assert.Contains("layer 3: 1 direct terms for 2 filters", Assert.Throws<InvalidDataException>(() => ModalFilters.Create("layer 3", 2, poles, residues, new[] { 0.0 })).Message);
    }
}
