"""Data parallelism under torchrun: NCCL on GPUs, gloo on the CPU, world size 1 without.

Gradients of the trained parameters are averaged with one flattened all-reduce per
optimizer step, which is what DistributedDataParallel computes. DDP's module wrapper
is not used because the adapter runs inside ComfyUI's UNet through the patch, not
through a forward() of its own; a single explicit reduce also makes gradient
accumulation and checkpointing trivially correct.
"""
import os

import torch
import torch.distributed as dist

_state = {"initialized_here": False}


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    return rank() == 0


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device_kind="auto"):
    """Joins the process group torchrun describes (WORLD_SIZE/RANK/MASTER_ADDR...).
    Returns the torch.device this process trains on: ComfyUI's device for "auto"
    (CUDA, MPS, XPU, DirectML... or the CPU), else the named one."""
    from .. import host

    if "LOCAL_RANK" in os.environ and device_kind != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local_rank())  # torchrun: one GPU per process, before ComfyUI picks "the" device
    device = host.torch_device(device_kind)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        _state["initialized_here"] = True
    return device


def shutdown():
    if _state["initialized_here"] and is_distributed():
        dist.barrier()
        dist.destroy_process_group()
        _state["initialized_here"] = False


def barrier():
    if is_distributed():
        dist.barrier()


def broadcast_parameters(params):
    """Every process starts from rank 0's values."""
    if not is_distributed():
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, 0)


def average_gradients(params):
    """Mean gradient over processes; a parameter without a gradient counts as zero."""
    if not is_distributed():
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def mean_of(values, device):
    """Mean of a small float vector over processes (for logging)."""
    t = torch.tensor(values, dtype=torch.float32, device=device)  # no float64 on a device (MPS)
    if is_distributed():
        dist.all_reduce(t)
        t /= world_size()
    return t.tolist()
