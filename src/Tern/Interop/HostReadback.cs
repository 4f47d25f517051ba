using TorchSharp;
using static TorchSharp.torch;

namespace Tern.Interop;

/// <summary>
/// Reads small int64 results (a step's tokens) back to the host without waiting for work queued after them: on CUDA each
/// read is a non-blocking copy into one of a few pinned buffers marked by an event, so the host can queue the next step before
/// it reads the previous step's tokens (vLLM's asynchronous scheduling). On the CPU a read is a plain copy.
/// </summary>
internal sealed class HostReadback : IDisposable
{
    /// <summary>A read in flight: which buffer, how many values.</summary>
    public readonly record struct Ticket(int Buffer, int Count);

    readonly Tensor[]? buffers;
    readonly IntPtr[]? events;
    readonly bool[] busy;
    Tensor?[]? hostCopies;

    /// <param name="capacity">Most values one read carries.</param>
    /// <param name="reads">Most reads in flight at once.</param>
    public HostReadback(Device device, int capacity, int reads)
    {
        busy = new bool[reads];
        if (device.type != DeviceType.CUDA)
        {
            hostCopies = new Tensor?[reads];
            return;
        }
        buffers = new Tensor[reads];
        events = new IntPtr[reads];
        for (int i = 0; i < reads; i++)
        {
            buffers[i] = torch.empty(capacity, ScalarType.Int64).pin_memory().DetachFromDisposeScope();
            events[i] = CudaDriver.CreateEvent();
        }
    }

    /// <summary>Starts copying <paramref name="values"/> (int64 [n]) to the host.</summary>
    public Ticket Start(Tensor values)
    {
        int b = Array.IndexOf(busy, false);
        if (b < 0) throw new InvalidOperationException($"{busy.Length} reads are already in flight: wait for one first.");
        busy[b] = true;
        int n = (int)values.size(0);
        if (buffers is null)
        {
            hostCopies![b] = values.cpu().clone().DetachFromDisposeScope();
            return new Ticket(b, n);
        }
        buffers[b].narrow(0, 0, n).copy_(values, true);
        CudaDriver.RecordEvent(events![b], LibTorchCuda.CurrentRawStreamOrDefault()); // the stream libtorch queued the copy on
        return new Ticket(b, n);
    }

    /// <summary>Waits for a read (only for it, not for later work) and returns its values.</summary>
    public long[] Wait(Ticket ticket)
    {
        if (!busy[ticket.Buffer]) throw new InvalidOperationException("this read was already collected.");
        busy[ticket.Buffer] = false;
        if (buffers is null)
        {
            using var copy = hostCopies![ticket.Buffer]!;
            hostCopies[ticket.Buffer] = null;
            return copy.data<long>().ToArray();
        }
        CudaDriver.SynchronizeEvent(events![ticket.Buffer]);
        return buffers[ticket.Buffer].narrow(0, 0, ticket.Count).data<long>().ToArray();
    }

    /// <summary>Forgets a read that will not be collected (its buffer may be reused once the copy is done).</summary>
    public void Drop(Ticket ticket)
    {
        if (busy[ticket.Buffer]) Wait(ticket);
    }

    public void Dispose()
    {
        if (buffers is not null)
        {
            for (int i = 0; i < buffers.Length; i++)
            {
                CudaDriver.SynchronizeEvent(events![i]); // a copy may still be writing into the buffer
                CudaDriver.DestroyEvent(events[i]);
                buffers[i].Dispose();
            }
        }
        else foreach (var copy in hostCopies!) copy?.Dispose();
    }
}
