"""Peak memory per process of BERT pretraining steps under DDP and under FSDP2, 2 processes, interleaved.

    python bench/parallel_memory.py                      # bert_base shape, CPU + gloo, batch 4 x 128
    python bench/parallel_memory.py --size small --steps 3

Each configuration (ddp, fsdp, ddp again, fsdp again) runs in fresh processes started by this script, so
peaks do not mix: AdamW steps on a ``BertForPreTraining`` with the recipe's shape, the model wrapped as
the trainer wraps it (DDP, or ``fully_shard`` on every block and then the root). Reported per process:
the kernel's max RSS (``ru_maxrss``; on a GPU the peak allocated CUDA memory as well), and the bytes of
parameters + gradients + optimizer state the process holds (FSDP: its shards).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
from pathlib import Path

SIZES = {"tiny": (2, 128, 2), "small": (4, 512, 8), "base": (12, 768, 12)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from xformer.models.bert import BertConfig
    from xformer.layers import blocks_of
    from xformer.losses import bert_pretraining_loss
    from xformer.models import BertForPreTraining

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    depth, dim, heads = SIZES[args.size]
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=30522, dim=dim, depth=depth, num_heads=heads,
                                          attn_backend="sdpa")).to(device)
    if args.mode == "fsdp":
        mesh = init_device_mesh(device.type, (world,))
        for block in blocks_of(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        step_model = model
    else:
        step_model = DistributedDataParallel(model, device_ids=[rank] if cuda else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(5, 30522, (args.batch, args.seq), generator=g).to(device)
    labels = torch.where(torch.rand(ids.shape, generator=g).to(device) < 0.15, ids, -100)
    nsp = torch.zeros(args.batch, dtype=torch.long, device=device)
    for _ in range(args.steps):
        res = step_model(ids, torch.ones_like(ids), torch.zeros_like(ids), labels=labels)
        loss, _ = bert_pretraining_loss(res.mlm_logits, res.nsp_logits, labels, nsp)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradients: they count in a step's peak

    def local_bytes(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    held = sum(local_bytes(p) + (local_bytes(p.grad) if p.grad is not None else 0) for p in model.parameters())
    held += sum(local_bytes(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())
    record = {"rank": rank, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "held_mb": held / 2**20}
    if cuda:
        record["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    Path(out, f"{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


def run(mode: str, args: argparse.Namespace) -> list[dict]:
    import torch.multiprocessing as mp

    args = argparse.Namespace(**{**vars(args), "mode": mode})
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(worker, args=(2, free_port(), args, out), nprocs=2, join=True, start_method="spawn")
        return [json.loads(Path(out, f"{r}.json").read_text()) for r in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="base")
    parser.add_argument("--batch", type=int, default=4, help="per process")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="ddp, fsdp, ddp, fsdp, ...")
    args = parser.parse_args()
    results = {"ddp": [], "fsdp": []}
    for _ in range(args.rounds):
        for mode in results:
            results[mode].append(run(mode, args))
    print(f"BERT-{args.size}, 2 processes, batch {args.batch} x {args.seq} per process, AdamW, {args.steps} steps")
    print(f"{'mode':<5} {'round':>5} {'rank':>4} {'max RSS MB':>11} {'params+grads+Adam MB':>21}")
    for mode, rounds in results.items():
        for i, recs in enumerate(rounds):
            for r in recs:
                print(f"{mode:<5} {i:>5} {r['rank']:>4} {r['max_rss_mb']:>11.0f} {r['held_mb']:>21.0f}"
                      + (f"  CUDA peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""))
    mean = {m: sum(r["max_rss_mb"] for recs in rs for r in recs) / sum(len(recs) for recs in rs)
            for m, rs in results.items()}
    held = {m: rs[0][0]["held_mb"] for m, rs in results.items()}
    print(f"ratio fsdp/ddp: max RSS {mean['fsdp'] / mean['ddp']:.2f}, params+grads+Adam {held['fsdp'] / held['ddp']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
