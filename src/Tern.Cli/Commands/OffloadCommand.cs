using System.CommandLine;
using Tern.Checkpoints;
using Tern.Offloading;
using Tern.Runtime;

namespace Tern.Cli.Commands;

/// <summary><c>tern offload calibrate</c> and <c>tern offload plan</c>: FlexGen's hardware constants and policy search.</summary>
internal static class OffloadCommand
{
    public static Command Create()
    {
        var command = new Command("offload", "FlexGen offloading: measure this machine (calibrate), choose a policy (plan).");
        command.Subcommands.Add(Calibrate());
        command.Subcommands.Add(Plan());
        return command;
    }

    /// <summary>Where <c>tern offload calibrate</c> writes when -o is not given: the per-user results folder, not the current
    /// folder (a checkout, often).</summary>
    static readonly string DefaultProfile = ResultsFolder.For("hardware-profile.json");

    static Command Calibrate()
    {
        var device = new Option<string>("--device") { Description = "cpu, cuda or auto.", DefaultValueFactory = _ => "auto" };
        device.AcceptOnlyFromAmong("cpu", "cuda", "auto");
        var dtype = new Option<string>("--dtype") { Description = "Type of the GEMM probes: fp16 (default), bf16, fp32.", DefaultValueFactory = _ => "fp16" };
        dtype.AcceptOnlyFromAmong("fp32", "bf16", "fp16");
        var dir = new Option<string?>("--offload-dir") { Description = "Folder whose disk is measured (a probe file is written there and removed)." };
        var output = new Option<string>("--output", "-o") { Description = $"Profile file written, JSON, atomically (default {DefaultProfile}).", DefaultValueFactory = _ => DefaultProfile };
        var size = new Option<string>("--size") { Description = "Bytes per transfer probe.", DefaultValueFactory = _ => "256MB" };
        var width = new Option<int>("--width") { Description = "Width h of the GEMM probes.", DefaultValueFactory = _ => 4096 };
        var command = new Command("calibrate", "Measure CPU↔GPU and disk bandwidths and GEMM / attention throughput; write a hardware profile.")
            { device, dtype, dir, output, size, width };
        command.SetAction(r =>
        {
            var d = ComputeOptions.ResolveDevice(ComputeOptions.ParseDevice(r.GetValue(device)!));
            var profile = Calibration.Run(new CalibrationOptions
            {
                Device = d, DType = ComputeOptions.ParseDType(r.GetValue(dtype)!), Directory = r.GetValue(dir),
                TransferBytes = Units.ParseBytes(r.GetValue(size)!, "--size"), Width = r.GetValue(width),
            }, Console.Out);
            string path = Path.GetFullPath(r.GetValue(output)!);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            profile.Save(path);
            Console.WriteLine($"wrote {path}");
            return 0;
        });
        return command;
    }

    static Command Plan()
    {
        var model = new Option<string>("--model", "-m") { Description = "Model folder (config.json is enough).", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "Weight type: fp16 (default), bf16, fp32.", DefaultValueFactory = _ => "fp16" };
        dtype.AcceptOnlyFromAmong("fp32", "bf16", "fp16");
        var prompt = new Option<int>("--prompt") { Description = "Prompt length s.", DefaultValueFactory = _ => 512 };
        var gen = new Option<int>("--gen") { Description = "New tokens n.", DefaultValueFactory = _ => 32 };
        var device = new Option<string>("--device") { Description = "Device whose free memory is the default --gpu-mem: cpu, cuda or auto.", DefaultValueFactory = _ => "cpu" };
        device.AcceptOnlyFromAmong("cpu", "cuda", "auto");
        var flags = new OffloadFlags();
        var kv = new KvPolicyFlags();
        var command = new Command("plan", "Choose an offloading policy with FlexGen's cost model and LP; print it and its predicted throughput.")
            { model, dtype, prompt, gen, device };
        flags.AddTo(command, withOffload: false);
        kv.AddTo(command);
        command.SetAction(r =>
        {
            string folder = r.GetValue(model)!;
            var dt = ComputeOptions.ParseDType(r.GetValue(dtype)!);
            var d = ComputeOptions.ResolveDevice(ComputeOptions.ParseDevice(r.GetValue(device)!));
            var kvCache = Caching.KvCachePolicies.Create(kv.Read(r));
            var workload = OffloadWorkload.FromConfig(folder, dt, r.GetValue(prompt), r.GetValue(gen)).WithKvPolicy(kvCache);
            var capacity = flags.Capacity(r, d);
            var hardware = flags.Hardware(r, Console.Out);
            var plan = PolicySearch.Find(flags.Plan(r, workload, hardware, capacity) with { WholeCache = OffloadedModel.NeedsResidentCache(kvCache) });
            var config = HfConfig.Load(folder);
            Console.WriteLine($"model:      {Path.GetFullPath(folder)} ({config.ModelType}, {workload.Layers} layers, hidden {workload.Hidden}, " +
                              $"{Units.Bytes(workload.LayerWeightBytes * workload.Layers)} of {dt.ShortName()} weights); prompt {workload.Prompt}, new {workload.Generate}");
            Console.WriteLine($"memory:     GPU {Units.Bytes(capacity.Gpu)}, CPU {Units.Bytes(capacity.Cpu)}, disk {Units.Bytes(capacity.Disk)} (plans fill at most 80%)");
            Console.WriteLine($"searched:   {plan.Candidates} (gbs, ngb) pairs, one LP each");
            OffloadFlags.Print(Console.Out, plan.Policy, plan.Prediction);
            string kvFlags = OffloadedModel.NeedsResidentCache(kvCache) ? " " + string.Join(' ', KvPolicyFlags.Echo(r, kv)) : "";
            Console.WriteLine($"run it:     tern bench --model {folder} --dummy --dtype {dt.ShortName()} --offload \"{plan.Policy}\" --prompt {workload.Prompt} --new-tokens {workload.Generate}{kvFlags}");
            return 0;
        });
        return command;
    }
}
