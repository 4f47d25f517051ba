#!/bin/bash
# Compress models/default with every method of the grid (CPU, 16 calibration sequences of 512 tokens).
T=/tmp/ctp/bin/Tern.Cli
M=/work/wt-ctp/models/default
C="--calib-text /tmp/ctp/calib.txt --calib-samples 16 --calib-seq-len 512"
cd /tmp/ctp
for b in 4 3 2; do $T compress -m $M --device cpu --method rtn --bits $b -o /tmp/ctp/m-rtn$b; done
for b in 4 3 2; do $T compress -m $M --device cpu --method gptq --bits $b $C -o /tmp/ctp/m-gptq$b; done
$T compress -m $M --device cpu --method sparsegpt --sparsity 0.5 $C -o /tmp/ctp/m-sp50
$T compress -m $M --device cpu --method sparsegpt --sparsity 0.75 $C -o /tmp/ctp/m-sp75
$T compress -m $M --device cpu --method sparsegpt --sparsity 0.5 --bits 4 $C -o /tmp/ctp/m-sp50q4
echo DONE
