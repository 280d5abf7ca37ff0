"""Training: a few optimisation steps reduce each model's loss; the `train` command runs
end to end (metrics, checkpoint, plots); resuming continues exactly; DDP with 2 CPU processes."""
from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

import pytest
import torch

from python_models import airshower as A
from python_models import train
from python_models.airshower_sim import simulate
from python_models.transformer import SeqTask, Transformer
from python_models.vit import ViT, load_digits_split
from python_models import ops

TINY = ["--n-train", "256", "--n-test", "64", "--batch-size", "32", "--max-steps", "3", "--no-progress"]


def _cli(argv):
    """Runs `pyfastattn train ...` through pyfastattn's command line; returns metrics.json."""
    from pyfastattn.cli import main
    assert main(["train"] + argv) == 0
    return json.loads((Path(argv[argv.index("--out") + 1]) / "metrics.json").read_text())


def test_add_arguments_registers_train():
    parser = argparse.ArgumentParser(prog="pyfastattn")
    train.add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "vit", "--epochs", "3", "--dtype", "bf16"])
    assert args.func is train.run and args.model == "vit" and args.epochs == 3 and args.dtype == "bf16"


def _steps_reduce_loss(model, loss_fn, steps=15, lr=5e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, float(loss_fn())


@pytest.fixture
def flush_denormal():
    torch.set_flush_denormal(True)  # as `train` does: GELU tails are denormal, slow on x86
    yield
    torch.set_flush_denormal(False)


def test_optimisation_reduces_loss(flush_denormal):
    torch.manual_seed(0)
    ev = simulate(16, seed=0, traces=True, n_bins=40)
    y = A.targets(ev, with_xmax=True)
    cnn = A.HexCNN(width=8, blocks=2, hidden=32, trace_bins=40, trace_channels=8, backend="torch")
    x, tr = A.station_features(ev), A.trace_features(ev)
    first, last = _steps_reduce_loss(cnn, lambda: A.shower_loss(cnn(x, tr), y))
    assert last < 0.8 * first, ("HexCNN", first, last)

    tok, xy, valid, trs = A.station_tokens(ev)
    st = A.ShowerTransformer(dim=16, heads=2, layers=1, hidden=32, trace_bins=40, trace_dim=8, backend="torch")
    first, last = _steps_reduce_loss(st, lambda: A.shower_loss(st(tok, xy, valid, trs), y))
    assert last < 0.8 * first, ("ShowerTransformer", first, last)

    xtr, ytr, _, _ = load_digits_split()
    vit = ViT(dim=32, heads=4, layers=1, hidden=64, backend="torch")
    xb, yb = xtr[:64], ytr[:64]
    first, last = _steps_reduce_loss(vit, lambda: torch.nn.functional.cross_entropy(vit(xb), yb))
    assert last < 0.8 * first, ("ViT", first, last)

    task = SeqTask("reverse", max_len=6)
    src, tgt = task.sample(64, seed=0)
    tr_model = Transformer(task.vocab, dim=32, heads=4, layers=1, hidden=64, max_len=10, backend="torch")

    def seq_loss():
        logits = tr_model(src, task.decoder_input(tgt))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, task.vocab), tgt.reshape(-1), ignore_index=0)
    first, last = _steps_reduce_loss(tr_model, seq_loss)
    assert last < 0.8 * first, ("Transformer", first, last)


def _backend_param(name, needs):
    missing = ops.missing_kernels(needs)
    marks = [pytest.mark.skip(reason=f"pyfastattn kernel not available yet: {', '.join(missing)}")] if missing else []
    return pytest.param(name, marks=marks, id=name)


ALL_OPS = ("sdpa", "layer_norm", "add_layer_norm", "conv2d", "hex_conv2d", "hex_max_pool2d")


@pytest.mark.parametrize("backend", ["torch", _backend_param("pyfastattn", ALL_OPS)])
@pytest.mark.parametrize("model,extra", [
    ("airshower", ["--arch", "cnn", "--traces", "--augment"]),
    ("airshower", ["--arch", "transformer"]),
    ("vit", []),
    ("transformer", ["--task", "reverse", "--max-len", "6", "--dtype", "bf16"]),
])
def test_cli_smoke(tmp_path, model, extra, backend):
    out = tmp_path / "run"
    res = _cli([model, "--backend", backend, "--epochs", "1", "--out", str(out), "--device", "cpu"] + TINY + extra)
    assert res["history"][0]["epoch"] == 1 and res["final"] == res["history"][-1]["test"]
    assert (out / "checkpoint.pt").exists() and (out / "training_curves.png").exists()
    if model == "airshower":
        for name in ("event_display", "resolution_vs_energy", "predicted_vs_true"):
            assert (out / f"{name}.png").stat().st_size > 0
        assert set(res["final"]) >= {"energy", "angle_deg_68", "core_m_68"}
        if "cnn" in extra:  # the final evaluation adds the symmetry-averaged prediction's
            assert set(res["final"]) >= {"sym_energy", "sym_angle_deg_68", "sym_core_m_68", "sym_xmax_g_cm2"}


def test_resume_continues_exactly(tmp_path):
    common = ["transformer", "--backend", "torch", "--task", "reverse", "--max-len", "5", "--epochs", "2",
              "--n-train", "64", "--n-test", "16", "--batch-size", "32", "--no-progress", "--no-plots",
              "--device", "cpu"]
    straight = _cli(common + ["--out", str(tmp_path / "a")])
    interrupted = _cli(common + ["--out", str(tmp_path / "b"), "--stop-after-epochs", "1"])
    assert len(interrupted["history"]) == 1
    resumed = _cli(common + ["--out", str(tmp_path / "b")])
    drop = ("seconds",)
    strip = lambda h: [{k: v for k, v in e.items() if k not in drop} for e in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(straight["history"])
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


def test_ddp_two_cpu_processes(tmp_path):
    """torchrun with 2 processes on the gloo backend; rank 0 writes the outputs."""
    import subprocess
    import sys
    import python_models
    root = os.path.dirname(os.path.dirname(python_models.__file__))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "python_models.train", "transformer", "--backend", "torch",
           "--task", "reverse", "--max-len", "5", "--n-train", "128", "--n-test", "32", "--batch-size", "16",
           "--epochs", "1", "--no-progress", "--no-plots", "--device", "cpu", "--out", str(out)]
    # cwd away from the checkout: `-m` puts cwd first on sys.path, and the source tree has no _C
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["environment"]["world_size"] == 2
    assert len(metrics["history"]) == 1
