namespace Tern.Tests;
public class ProbeTests { [Fact] public void MatmulWorks() => Assert.Equal(1024.0 * 1024 * 1024, Tern.Probe.Sum()); }
