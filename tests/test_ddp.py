"""DDP: every TENET / RSC pass inside one module forward keeps replicas in sync (two CPU processes, gloo)."""
import os

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from timm_tenet import RscConfig, RscTask, TenetConfig, TenetTask

STEPS = 3

TASKS = dict(
    tenet=lambda model: TenetTask(model, TenetConfig(stage=3, warmup_steps=0, period=1, only_correct=False),
                                  verbose=False),
    # BatchNorm in D, and each rank draws its own spatial/channel choice
    rsc=lambda model: RscTask(model, RscConfig(stage=3, batch_percent=0.5), verbose=False, seed=dist.get_rank()),
)


def _train_replica(rank: int, world_size: int, init_file: str, out_dir: str, method: str) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    torch.set_num_threads(1)  # two processes on two cores
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=10)
    task = TASKS[method](model)
    task.prepare_distributed()
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    task.train()
    for _ in range(STEPS):
        x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)
        optimizer.zero_grad()
        task(x, y)['loss'].backward()
        optimizer.step()
    params = torch.cat([p.detach().flatten() for p in task.get_eval_model().parameters()])
    torch.save(params, os.path.join(out_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.parametrize('method', sorted(TASKS))
def test_ddp_steps_keep_parameters_in_sync(tmp_path, method):
    mp.spawn(_train_replica, args=(2, str(tmp_path / 'init'), str(tmp_path), method), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2))
    torch.manual_seed(0)
    initial = torch.cat([p.detach().flatten() for p in timm.create_model('test_resnet', num_classes=10).parameters()])
    assert not torch.allclose(rank0, initial)  # training moved the weights...
    torch.testing.assert_close(rank0, rank1, rtol=0, atol=1e-6)  # ...identically on both ranks
