"""`pyfastattn train {airshower,vit,transformer}`: training, evaluation, checkpoints and plots.

    pyfastattn train airshower --arch cnn --epochs 8 --out runs/hexcnn
    pyfastattn train vit --epochs 60 --out runs/vit
    pyfastattn train transformer --task sort --epochs 12 --out runs/seq2seq
    torchrun --nproc_per_node 2 -m python_models.train airshower ...   (DDP; gloo on the CPU)

Writes into --out: `checkpoint.pt` (after every epoch; a rerun with the same --out resumes from
it unless --no-resume), `metrics.json` (arguments, environment, per-epoch history, final test
metrics, wall time) and PNG plots (training curves; for air showers an event display on the
hexagonal grid, resolution against energy and predicted against true).

Each epoch reseeds torch and the shuffling from (--seed, epoch), so a resumed run continues
exactly as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

MODELS = ("airshower", "vit", "transformer")


# ---------------------------------------------------------------- command line

def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", choices=MODELS, help="which example model to train")
    parser.add_argument("--backend", choices=("pyfastattn", "torch"), default="pyfastattn",
                        help="kernels for attention/norm/conv (default: pyfastattn)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--epochs", type=int, default=None, help="default depends on the model")
    parser.add_argument("--batch-size", type=int, default=None, help="default depends on the model")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 runs forward/backward under bfloat16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default: runs/<model>)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--stop-after-epochs", type=int, default=None,
                        help="leave after this many epochs in this invocation (time-limited jobs); "
                             "rerun with the same --out to resume")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop each epoch after this many steps (smoke tests)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g = parser.add_argument_group("airshower")
    g.add_argument("--arch", choices=("cnn", "transformer"), default="cnn",
                   help="HexCNN or ShowerTransformer")
    g.add_argument("--traces", action="store_true", help="simulate and use traces (adds Xmax)")
    g.add_argument("--trace-bins", type=int, default=120, help="25 ns bins per trace (with --traces)")
    g.add_argument("--width", type=int, default=None,
                   help="HexCNN channels [32]; model dim of ShowerTransformer and ViT [64]")
    g.add_argument("--augment", action="store_true",
                   help="cnn: train on each event under a random one of the patch's 12 symmetries")
    g.add_argument("--loss-weights", type=float, nargs="+", default=None, metavar="W",
                   help="weights of the energy, axis, core [and Xmax] terms of the loss "
                        "(default: python_models.airshower.LOSS_WEIGHTS)")
    g.add_argument("--n-train", type=int, default=None, help="training events / sequences")
    g.add_argument("--n-test", type=int, default=None, help="test events / sequences")
    g = parser.add_argument_group("vit")
    g.add_argument("--patch-size", type=int, default=2, help="ViT patch size (divides 8)")
    g = parser.add_argument_group("transformer")
    g.add_argument("--task", choices=("sort", "reverse"), default="sort")
    g.add_argument("--max-len", type=int, default=12, help="longest sequence")
    parser.set_defaults(func=run)
    return parser


def add_arguments(subparsers) -> argparse.ArgumentParser:
    """Registers `train` on an argparse subparsers object (used by pyfastattn.cli)."""
    p = subparsers.add_parser("train", help="train an example model (python_models)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return build_parser(p)


DEFAULTS = {  # epochs, batch size, lr, n_train, n_test
    "airshower": (10, 128, 1e-3, 100_000, 10_000),
    "vit": (80, 64, 1e-3, None, None),
    "transformer": (12, 128, 1e-3, 40_000, 2_000),
}


# ---------------------------------------------------------------- distributed helpers

def _dist_setup(device_arg: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_arg)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, rank, device


def _all_reduce_mean(x: float, world: int) -> float:
    if world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world


# ---------------------------------------------------------------- tasks

class _Task:
    """One model family: data, model, loss, evaluation and plots."""

    def __init__(self, args):
        self.args = args

    def batches(self, data, idx, bs):
        for s in range(0, len(idx), bs):
            sel = idx[s: s + bs]
            yield tuple(t[sel] for t in data)


class AirshowerTask(_Task):
    def setup(self):
        from . import airshower as A
        from .airshower_sim import simulate
        a = self.args
        self.A = A
        self.train_ev = simulate(a.n_train, seed=a.seed * 2 + 1000, traces=a.traces, n_bins=a.trace_bins)
        self.test_ev = simulate(a.n_test, seed=a.seed * 2 + 1001, traces=a.traces, n_bins=a.trace_bins)
        self.train = self._tensors(self.train_ev)
        self.test = self._tensors(self.test_ev)
        bins = self.train_ev["traces"].shape[-1] if a.traces else None
        if a.arch == "cnn":
            return A.HexCNN(width=a.width or 32, trace_bins=bins, backend=a.backend)
        w = a.width or 64
        return A.ShowerTransformer(dim=w, hidden=2 * w, trace_bins=bins, backend=a.backend)

    def _tensors(self, ev):
        A, a = self.A, self.args
        y = A.targets(ev, with_xmax=a.traces)
        if a.arch == "cnn":
            xs = (A.station_features(ev),) + ((A.trace_features(ev),) if a.traces else ())
        else:
            xs = A.station_tokens(ev)
        return xs + (y,)

    def loss(self, model, batch):
        *xs, y = batch
        if model.training and self.args.augment and self.args.arch == "cnn":
            source, mats = self.A.patch_symmetries()
            g = torch.randint(0, len(mats), (y.shape[0],), device=y.device)
            xs = [self.A.apply_symmetry(t, g, source) for t in xs]
            y = self.A.transform_targets(y, g, mats)
        return self.A.shower_loss(model(*xs), y, self.loss_weights)

    @property
    def loss_weights(self):
        return tuple(self.args.loss_weights or self.A.LOSS_WEIGHTS)

    @torch.no_grad()
    def evaluate(self, model, device, autocast, final=False):
        """Resolutions on the test set; for the CNN's final evaluation also those of the
        prediction averaged over the patch's 12 symmetries (keys prefixed `sym_`)."""
        symmetric = final and self.args.arch == "cnn"
        outs, sym_outs, ys = [], [], []
        for b in self.batches(self.test, torch.arange(len(self.test[-1])), 512):
            b = tuple(t.to(device) for t in b)
            with autocast():
                outs.append(model(*b[:-1]).float().cpu())
                if symmetric:
                    sym_outs.append(self.A.symmetric_predict(model, *b[:-1]).cpu())
            ys.append(b[-1].cpu())
        out, y = torch.cat(outs), torch.cat(ys)
        m = self.A.resolutions(out, y)
        m["loss"] = float(self.A.shower_loss(out, y, self.loss_weights))
        self.last = (out, y)
        if symmetric:
            sym = torch.cat(sym_outs)
            m.update({f"sym_{k}": v for k, v in self.A.resolutions(sym, y).items()})
            self.last = (sym, y)
        return m

    def plots(self, out_dir):
        from . import plots
        out, y = self.last
        plots.event_display(self.test_ev, 0, out_dir / "event_display.png")
        plots.resolution_vs_energy(self.A.decode(out), self.A.decode(y), out_dir / "resolution_vs_energy.png")
        plots.predicted_vs_true(self.A.decode(out), self.A.decode(y), out_dir / "predicted_vs_true.png")


class VitTask(_Task):
    def setup(self):
        from .vit import ViT, augment, load_digits_split
        self.augment = augment
        xtr, ytr, xte, yte = load_digits_split(seed=self.args.seed)
        self.train, self.test = (xtr, ytr), (xte, yte)
        return ViT(patch_size=self.args.patch_size, dim=self.args.width or 64,
                   hidden=2 * (self.args.width or 64), backend=self.args.backend, dropout=0.1)

    def loss(self, model, batch):
        x, y = batch
        if model.training:
            x = self.augment(x.cpu(), torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))).to(x.device)
        return nn.functional.cross_entropy(model(x).float(), y, label_smoothing=0.05)

    @torch.no_grad()
    def evaluate(self, model, device, autocast, final=False):
        x, y = (t.to(device) for t in self.test)
        with autocast():
            logits = model(x).float()
        return {"loss": float(nn.functional.cross_entropy(logits, y)),
                "accuracy": float((logits.argmax(1) == y).float().mean())}


class Seq2SeqTask(_Task):
    def setup(self):
        from .transformer import SeqTask, Transformer
        a = self.args
        self.task = SeqTask(a.task, max_len=a.max_len)
        src, tgt = self.task.sample(a.n_train, seed=a.seed * 2 + 2000)
        self.train = (src, self.task.decoder_input(tgt), tgt)
        # held-out sequences: a disjoint seed, and any test sequence seen in training removed
        tsrc, ttgt = self.task.sample(a.n_test, seed=a.seed * 2 + 2001)
        seen = {tuple(r) for r in src.tolist()}
        keep = torch.tensor([tuple(r) not in seen for r in tsrc.tolist()])
        self.test = (tsrc[keep], ttgt[keep])
        return Transformer(self.task.vocab, dim=64, heads=4, layers=2, hidden=256,
                           max_len=a.max_len + 2, backend=a.backend)

    def loss(self, model, batch):
        src, tin, tgt = batch
        logits = model(src, tin).float()
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                           ignore_index=self.task.PAD)

    @torch.no_grad()
    def evaluate(self, model, device, autocast, final=False):
        from .transformer import exact_match
        src, tgt = (t.to(device) for t in self.test)
        hits = []
        for s in range(0, len(src), 512):
            with autocast():
                pred = model.greedy_decode(src[s:s + 512], self.task.BOS, self.task.EOS, tgt.shape[1])
            hits.append(exact_match(pred, tgt[s:s + 512]))
        return {"exact_match": float(torch.cat(hits).float().mean()), "n_test": int(len(src))}


TASKS = {"airshower": AirshowerTask, "vit": VitTask, "transformer": Seq2SeqTask}


# ---------------------------------------------------------------- training loop

def _lr_lambda(total_steps: int, warmup: int):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
    return f


def run(args) -> dict:
    """Trains `args.model`; returns the final metrics (rank 0 writes the outputs)."""
    t_start = time.time()
    ep_d, bs_d, lr_d, ntr_d, nte_d = DEFAULTS[args.model]
    args.epochs = ep_d if args.epochs is None else args.epochs
    args.batch_size = bs_d if args.batch_size is None else args.batch_size
    args.lr = lr_d if args.lr is None else args.lr
    args.n_train = ntr_d if args.n_train is None else args.n_train
    args.n_test = nte_d if args.n_test is None else args.n_test
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"pyfastattn train: --{name.replace('_', '-')} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    # GELU tails produce float32 denormals, which run ~5x slower on x86 CPUs
    torch.set_flush_denormal(True)
    world, rank, device = _dist_setup(args.device)
    out_dir = Path(args.out or f"runs/{args.model}")
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    task = TASKS[args.model](args)
    model = task.setup().to(device)
    module = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # fused: one kernel over all parameters (on the CPU ~6x faster than the per-tensor loop)
    opt = torch.optim.AdamW(module.parameters(), lr=args.lr, weight_decay=0.01, fused=True)
    n_train = len(task.train[0])
    per_rank = n_train // world
    steps = math.ceil(per_rank / args.batch_size)
    if args.max_steps:
        steps = min(steps, args.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(args.epochs * steps, max(1, min(200, steps))))

    ckpt_path = out_dir / "checkpoint.pt"
    history, start_epoch = [], 0
    if ckpt_path.exists() and not args.no_resume:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        module.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history, start_epoch = ck["history"], ck["epoch"] + 1
        if rank == 0:
            print(f"resuming from {ckpt_path} after epoch {ck['epoch'] + 1}", file=sys.stderr)

    use_bf16 = args.dtype == "bf16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    from tqdm.auto import tqdm
    metrics = history[-1]["test"] if history else {}
    last_epoch = args.epochs
    if args.stop_after_epochs is not None:
        last_epoch = min(args.epochs, start_epoch + args.stop_after_epochs)
    for epoch in range(start_epoch, last_epoch):
        t0 = time.time()
        torch.manual_seed(args.seed * 100_003 + epoch)
        perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(args.seed * 7919 + epoch))
        idx = perm[rank * per_rank:(rank + 1) * per_rank][: steps * args.batch_size]
        model.train()
        total, count = 0.0, 0
        bar = tqdm(task.batches(task.train, idx, args.batch_size), total=steps, leave=False,
                   desc=f"{args.model} epoch {epoch + 1}/{args.epochs}",
                   disable=args.no_progress or rank != 0)
        for batch in bar:
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            with autocast():
                loss = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach())
            count += 1
            bar.set_postfix(loss=f"{total / count:.4f}")
        train_loss = _all_reduce_mean(total / max(count, 1), world)
        module.eval()
        metrics = task.evaluate(module, device, autocast, final=epoch + 1 == args.epochs) if rank == 0 else {}
        entry = {"epoch": epoch + 1, "train_loss": train_loss, "test": metrics,
                 "seconds": time.time() - t0, "lr": sched.get_last_lr()[0]}
        history.append(entry)
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}  train_loss {train_loss:.4f}  "
                  + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()), file=sys.stderr)
            torch.save({"model": module.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "epoch": epoch, "history": history,
                        "args": vars(args) | {"func": None}}, ckpt_path)
        if world > 1:
            dist.barrier()

    result = {"model": args.model, "final": metrics, "history": history}
    if rank == 0:
        result.update({
            "args": {k: v for k, v in vars(args).items() if k != "func"},
            "environment": {"device": str(device), "device_name": _device_name(device),
                            "world_size": world, "torch": torch.__version__,
                            "python": platform.python_version(), "threads": torch.get_num_threads()},
            "parameters": sum(p.numel() for p in module.parameters()),
            "wall_seconds": time.time() - t_start,
        })
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        if not args.no_plots:
            from . import plots
            plots.training_curves(history, out_dir / "training_curves.png")
            if hasattr(task, "plots") and history:
                if not hasattr(task, "last"):
                    task.evaluate(module, device, autocast, final=True)
                task.plots(out_dir)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def main(argv=None):
    parser = build_parser(argparse.ArgumentParser(prog="pyfastattn train", description=__doc__,
                                                  formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    if args.loss_weights is not None and len(args.loss_weights) not in (3, 4):
        parser.error(f"--loss-weights takes 3 or 4 values (energy axis core [xmax]), got {len(args.loss_weights)}")
    run(args)
    return 0


if __name__ == "__main__":
    main()
