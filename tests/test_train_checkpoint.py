"""Training checkpoints: atomic writes, weights_only loading with one-line errors, full-state resume."""
import os

import pytest
import timm
import torch
from timm.scheduler import create_scheduler_v2

from timm_tenet import TenetConfig, TenetTask
from timm_tenet.models import model_from_checkpoint
from timm_tenet.training.checkpoint import AtomicCheckpointSaver, restore_training_state
from timm_tenet.utils.checkpoint import CheckpointError, load_checkpoint_file, load_model_weights


def _task(seed=0):
    torch.manual_seed(seed)
    model = timm.create_model('test_resnet', num_classes=3)
    return TenetTask(model, TenetConfig(num_groups=2, stage=-1, warmup_steps=0, period=2), verbose=False)


def _step(task, optimizer, n=1):
    for _ in range(n):
        task.train()
        result = task(torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,)))
        result['loss'].backward()
        optimizer.step()
        optimizer.zero_grad()
        task.update_ema()


def _saver(task, optimizer, folder, scheduler=None):
    return AtomicCheckpointSaver(task, optimizer, args={'model': 'test_resnet'}, lr_scheduler=scheduler,
                                 checkpoint_dir=str(folder), max_history=2)


def test_checkpoint_holds_model_ema_optimizer_scheduler_and_tenet_step(tmp_path):
    task = _task()
    task.setup_ema(decay=0.5)
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.1, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, 'cosine', num_epochs=4, warmup_epochs=0)
    _step(task, optimizer, 3)
    _saver(task, optimizer, tmp_path, scheduler).save_checkpoint(epoch=1, metric=50.)
    checkpoint = torch.load(tmp_path / 'last.pth.tar', weights_only=True)
    assert checkpoint['task_state']['tenet_step'] == 3 and checkpoint['epoch'] == 1
    assert {'state_dict', 'state_dict_ema', 'optimizer', 'scheduler', 'saver', 'args'} <= set(checkpoint)
    assert set(checkpoint['state_dict']) == set(task.get_eval_model().state_dict())  # bare model keys

    fresh = _task(seed=1)
    fresh.setup_ema(decay=0.5)
    fresh_opt = torch.optim.SGD(fresh.get_trainable_module().parameters(), lr=0.1, momentum=0.9)
    fresh_sched, _ = create_scheduler_v2(fresh_opt, 'cosine', num_epochs=4, warmup_epochs=0)
    start = restore_training_state(fresh, checkpoint, 'last', fresh_opt, lr_scheduler=fresh_sched)
    assert start == 2 and fresh.step == 3
    for a, b in zip(fresh.get_eval_model().state_dict().values(), task.get_eval_model().state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(fresh.get_eval_model(ema=True).state_dict().values(),
                    task.get_eval_model(ema=True).state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()['state'][0]['momentum_buffer'].equal(
        optimizer.state_dict()['state'][0]['momentum_buffer'])


def test_a_crash_while_saving_leaves_every_checkpoint_complete(tmp_path, monkeypatch):
    task = _task()
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.1)
    saver = _saver(task, optimizer, tmp_path)
    saver.save_checkpoint(epoch=0, metric=10.)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)  # half-written, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', dying_save)
    _step(task, optimizer)
    with pytest.raises(KeyboardInterrupt):
        saver.save_checkpoint(epoch=1, metric=20.)
    monkeypatch.undo()
    after = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    assert after == before  # no temporary file left, nothing replaced
    for name in after:
        assert torch.load(tmp_path / name, weights_only=True)['epoch'] == 0


def test_stale_temporary_files_are_removed_by_the_next_saver(tmp_path):
    stale = tmp_path / '.last.pth.tar.tmp-12345'
    stale.write_bytes(b'partial')
    task = _task()
    _saver(task, torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.1), tmp_path)
    assert not stale.exists()


def test_ranked_history_and_best_file_follow_the_metric(tmp_path):
    task = _task()
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.1)
    saver = _saver(task, optimizer, tmp_path)
    for epoch, metric in enumerate([10., 30., 20.]):
        best = saver.save_checkpoint(epoch=epoch, metric=metric)
    assert best == (30., 1)
    assert sorted(f for f in os.listdir(tmp_path)) == [
        'checkpoint-1.pth.tar', 'checkpoint-2.pth.tar', 'last.pth.tar', 'model_best.pth.tar']
    assert torch.load(tmp_path / 'model_best.pth.tar', weights_only=True)['epoch'] == 1


@pytest.mark.parametrize('content, message', [
    (b'', 'truncated or corrupt'),
    (b'not a checkpoint at all', 'corrupt or not a PyTorch file'),
])
def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / 'bad.pth.tar'
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint_file(str(path))
    assert '\n' not in str(info.value) and str(path) in str(info.value)


def test_text_file_named_like_a_checkpoint_is_a_one_line_error_not_a_key_error(tmp_path):
    path = tmp_path / 'notes.pth.tar'
    path.write_text('hello world\nthese are notes, not weights\n')  # torch.load raises KeyError on these bytes
    for load in (load_checkpoint_file, lambda p: load_model_weights(timm.create_model('test_resnet'), p)):
        with pytest.raises(CheckpointError, match='is corrupt or not a PyTorch file') as info:
            load(str(path))
        assert '\n' not in str(info.value) and str(path) in str(info.value)


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    task = _task()
    path = tmp_path / 'c.pth.tar'
    torch.save({'state_dict': task.get_eval_model().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(str(path))
    assert '\n' not in str(info.value)


class _Foreign:
    pass


def test_foreign_pickled_objects_are_refused_not_run(tmp_path):
    path = tmp_path / 'foreign.pth'
    torch.save({'state_dict': {}, 'obj': _Foreign()}, path)
    with pytest.raises(CheckpointError, match='refusing to load') as info:
        load_checkpoint_file(str(path))
    assert '\n' not in str(info.value)


def test_checkpoint_of_another_model_names_the_mismatch(tmp_path):
    path = tmp_path / 'r18.pth'
    torch.save(timm.create_model('resnet18').state_dict(), path)
    with pytest.raises(CheckpointError, match=r'does not fit ResNet: .*missing key|unexpected key') as info:
        load_model_weights(timm.create_model('test_resnet'), str(path))
    assert '\n' not in str(info.value)
    with pytest.raises(CheckpointError, match='not a training checkpoint'):
        restore_training_state(_task(), {'foo': 1}, 'x')


def test_model_from_checkpoint_rebuilds_the_recorded_model_from_a_file_or_output_folder(tmp_path):
    task = _task()
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.1)
    AtomicCheckpointSaver(task, optimizer, args={'model': 'test_resnet', 'num_classes': 3},
                          checkpoint_dir=str(tmp_path)).save_checkpoint(epoch=0, metric=1.)
    model = model_from_checkpoint(str(tmp_path))  # the folder: model_best.pth.tar
    assert not model.training and model.num_classes == 3
    for a, b in zip(model.state_dict().values(), task.get_eval_model().state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match='has no EMA weights'):
        model_from_checkpoint(str(tmp_path / 'last.pth.tar'), use_ema=True)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(CheckpointError, match='no model_best.pth.tar or last.pth.tar'):
        model_from_checkpoint(str(tmp_path / 'empty'))
