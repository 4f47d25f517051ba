namespace Tern;
public static class Probe { public static double Sum() { using var a = TorchSharp.torch.ones(1024, 1024); using var b = a.matmul(a); return b.sum().item<float>(); } }
