// GPU tests share one device, and CUDA-graph capture must not race other threads' work on it: run them one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
