"""validate.py end to end (through ``validate.main``) and the evaluation library behind it."""
import argparse
import csv
import importlib.util
import json
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_tenet  # noqa: F401  registers the _tenet models
from timm_tenet.robustness.corruptions import mce, relative_mce
from timm_tenet.robustness.attack_eval import evaluate_attacks
from timm_tenet.robustness.corruption_eval import corruption_variants
from timm_tenet.robustness.loading import create_eval_model, wrap_for_eval
from timm_tenet.robustness.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS
from timm_tenet.robustness.options import EvaluationError, parse_corruptions
from timm_tenet.robustness.variants import evaluate_variants
from timm_tenet.utils.checkpoint import resolve_checkpoint_path
from timm_tenet.robustness.results import format_table, write_results

ROOT = Path(__file__).resolve().parents[1]
CLASSES, PER_CLASS, SIZE = 3, 4, 32


def _load_validate_script():
    spec = importlib.util.spec_from_file_location('validate_script', ROOT / 'validate.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = _load_validate_script()


pytestmark = pytest.mark.usefixtures('one_thread')


def _write_images(folder: Path, per_class: int, rng: np.random.Generator) -> None:
    for c in range(CLASSES):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (SIZE, SIZE, 3)) + 80 * c
            Image.fromarray(pixels.astype(np.uint8)).save(folder / str(c) / f'{i}.png')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp('data')
    _write_images(root / 'validation', PER_CLASS, np.random.default_rng(0))
    return str(root)


def _head_biased(model: torch.nn.Module, bias) -> torch.nn.Module:
    """Zero classifier weights and the given bias: every image is predicted as argmax(bias)."""
    with torch.no_grad():
        model.get_classifier().weight.zero_()
        model.get_classifier().bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return model


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> str:
    """A checkpoint as train.py / timm write it: args (timm's Namespace), arch, EMA weights predicting class 2."""
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=CLASSES)
    ema = _head_biased(timm.create_model('test_resnet', num_classes=CLASSES), [0.0, 0.0, 5.0])
    path = tmp_path_factory.mktemp('ckpt') / 'last.pth.tar'
    torch.save({
        'epoch': 3, 'arch': 'test_resnet', 'version': 2, 'metric': 50.0,
        'args': argparse.Namespace(model='test_resnet', num_classes=CLASSES, img_size=SIZE, input_size=None,
                                   in_chans=None, crop_pct=1.0, mean=None, std=None),
        'state_dict': model.state_dict(), 'state_dict_ema': ema.state_dict(),
    }, path)
    return str(path)


@pytest.fixture(scope='module')
def cifar_c(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp('cifar_c')
    rng = np.random.default_rng(1)
    n = 6
    np.save(root / 'labels.npy', np.tile(np.arange(n) % CLASSES, 5).astype(np.uint8))
    for name in ('gaussian_noise', 'fog'):
        np.save(root / f'{name}.npy', rng.integers(0, 256, (5 * n, SIZE, SIZE, 3)).astype(np.uint8))
    return str(root)


@pytest.fixture(scope='module')
def imagenet_c(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp('imagenet_c')
    rng = np.random.default_rng(2)
    for name in ('gaussian_noise', 'contrast'):
        for severity in range(1, 6):
            _write_images(root / name / str(severity), 2, rng)
    return str(root)


def _run(args, tmp_path, fmt='json', extra=()):
    results = tmp_path / f'results.{fmt}'
    argv = ['-j', '0', '-b', '8', '--results-file', str(results), '--results-format', fmt, *args, *extra]
    assert validate.main(argv) == 0
    if fmt == 'json':
        return json.loads(results.read_text())
    with open(results, newline='') as f:
        return list(csv.DictReader(f))


def _error(caplog, argv) -> str:
    caplog.clear()
    assert validate.main(['-j', '0', '-b', '8', *argv]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']
    assert len(errors) == 1
    return errors[0]


def test_clean_row_has_timm_fields_and_checkpoint_arguments(data_dir, checkpoint, tmp_path):
    results = _run(['--checkpoint', checkpoint, '--data-dir', data_dir], tmp_path)
    clean = results['clean']
    for key in ('model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct',
                'interpolation'):
        assert key in clean
    assert clean['model'] == 'test_resnet'  # taken from the checkpoint's recorded arguments
    assert clean['img_size'] == SIZE and clean['crop_pct'] == 1.0
    assert clean['top1'] + clean['top1_err'] == pytest.approx(100.0)
    assert clean['top5'] == 100.0  # 3 classes: top-5 is top-3
    assert clean['param_count'] == round(sum(p.numel() for p in timm.create_model(
        'test_resnet', num_classes=CLASSES).parameters()) / 1e6, 2)
    assert set(results) == {'clean'}


def test_use_ema_evaluates_the_ema_weights(data_dir, checkpoint, tmp_path):
    clean = _run(['--checkpoint', checkpoint, '--data-dir', data_dir, '--use-ema'], tmp_path)['clean']
    assert clean['top1'] == pytest.approx(100.0 / CLASSES, abs=1e-3)  # the EMA head predicts class 2 only


def test_checkpoint_folder_prefers_model_best_then_last_then_newest(tmp_path):
    for name in ('checkpoint-1.pth.tar', 'checkpoint-2.pth.tar'):
        (tmp_path / name).write_bytes(b'')
    os.utime(tmp_path / 'checkpoint-1.pth.tar', (2e9, 2e9))
    assert resolve_checkpoint_path(str(tmp_path)).endswith('checkpoint-1.pth.tar')
    (tmp_path / 'last.pth.tar').write_bytes(b'')
    assert resolve_checkpoint_path(str(tmp_path)).endswith('last.pth.tar')
    (tmp_path / 'model_best.pth.tar').write_bytes(b'')
    assert resolve_checkpoint_path(str(tmp_path)).endswith('model_best.pth.tar')


def test_tenet_model_gives_the_plain_models_results(data_dir, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / 'resnet18.pth.tar'
    torch.save({'state_dict': timm.create_model('resnet18', num_classes=CLASSES).state_dict()}, path)
    common = ['--checkpoint', str(path), '--data-dir', data_dir, '--num-classes', str(CLASSES),
              '--img-size', str(SIZE)]
    plain = _run(['--model', 'resnet18', *common], tmp_path)['clean']
    tenet = _run(['--model', 'resnet18_tenet', *common], tmp_path)['clean']
    assert tenet['model'] == 'resnet18_tenet'
    assert (tenet['top1'], tenet['top5'], tenet['param_count']) == (plain['top1'], plain['top5'], plain['param_count'])


def test_on_the_fly_corruption_rows_and_csv(data_dir, checkpoint, tmp_path):
    rows = _run(['--checkpoint', checkpoint, '--data-dir', data_dir, '--corrupt', 'gaussian_noise',
                 '--severities', '1,5'], tmp_path, fmt='csv')
    assert [r['section'] for r in rows] == ['clean', 'corruptions', 'corruptions', 'corruption_summary']
    corrupted = rows[1:3]
    assert [(r['corruption'], r['severity']) for r in corrupted] == [('gaussian_noise', '1'), ('gaussian_noise', '5')]
    summary = rows[3]
    assert float(summary['mean_corruption_error']) == pytest.approx(
        sum(float(r['top1_err']) for r in corrupted) / 2, abs=1e-3)
    assert summary['constants'] == 'cifar'  # 32 px input


def test_corrupt_extra_and_released_storage(data_dir, checkpoint, tmp_path):
    results = _run(['--checkpoint', checkpoint, '--data-dir', data_dir, '--corrupt', 'extra', '--severities', '3',
                    '--corrupt-released'], tmp_path)
    assert [r['corruption'] for r in results['corruptions']] == \
        ['speckle_noise', 'gaussian_blur', 'spatter', 'saturate']
    assert results['corruption_summary']['released'] is True


def test_corrupt_all_is_the_benchmark_and_unknown_names_list_every_corruption():
    assert parse_corruptions(['all']) == CORRUPTIONS and 'spatter' not in CORRUPTIONS
    assert parse_corruptions(['extra', 'fog']) == EXTRA_CORRUPTIONS + ('fog',)
    with pytest.raises(EvaluationError) as info:
        parse_corruptions(['fogg'])
    message = str(info.value)
    assert all(name in message for name in CORRUPTIONS + EXTRA_CORRUPTIONS) and '\n' not in message


def test_on_the_fly_corruption_is_seeded_per_pair():
    torch.manual_seed(0)
    model = wrap_for_eval(timm.create_model('test_resnet', num_classes=CLASSES), (0.5,) * 3, (0.5,) * 3).eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(8, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (8,), generator=g))
               for _ in range(2)]
    both = evaluate_variants(model, batches, corruption_variants(['gaussian_noise', 'contrast'], [5], seed=3),
                             progress=False)
    alone = evaluate_variants(model, batches, corruption_variants(['gaussian_noise'], [5], seed=3), progress=False)
    assert alone[('gaussian_noise', 5)] == both[('gaussian_noise', 5)]
    assert both[('gaussian_noise', 5)]['count'] == 16


def test_cifar_c_folder_gives_rows_per_severity_and_mean_error(cifar_c, checkpoint, tmp_path):
    results = _run(['--checkpoint', checkpoint, '--corruption-dir', cifar_c], tmp_path)
    rows = results['corruptions']
    assert [(r['corruption'], r['severity']) for r in rows] == \
        [(name, s) for name in ('gaussian_noise', 'fog') for s in range(1, 6)]
    summary = results['corruption_summary']
    assert summary['source'] == 'cifar-c' and 'mce' not in summary
    assert summary['mean_corruption_error'] == pytest.approx(sum(r['top1_err'] for r in rows) / 10, abs=1e-3)
    assert 'clean' not in results  # no --data-dir: -C only


def test_corruptions_and_severities_select_a_subset(cifar_c, checkpoint, tmp_path):
    results = _run(['--checkpoint', checkpoint, '--corruption-dir', cifar_c, '--corruptions', 'fog',
                    '--severities', '2', '4'], tmp_path)
    assert [(r['corruption'], r['severity']) for r in results['corruptions']] == [('fog', 2), ('fog', 4)]


def test_imagenet_c_folder_reports_mce_and_relative_mce(imagenet_c, data_dir, checkpoint, tmp_path):
    results = _run(['--checkpoint', checkpoint, '--data-dir', data_dir, '--corruption-dir', imagenet_c,
                    '--corruption-format', 'imagenet-c'], tmp_path)
    errors = {}
    for row in results['corruptions']:
        errors.setdefault(row['corruption'], []).append(row['top1_err'] / 100)
    assert list(errors) == ['gaussian_noise', 'contrast']  # ImageNet-C order
    summary = results['corruption_summary']
    assert summary['mce'] == pytest.approx(mce(errors), abs=1e-3)
    clean_error = results['clean']['top1_err'] / 100
    assert summary['relative_mce'] == pytest.approx(relative_mce(errors, clean_error), abs=1e-3)


def test_fgsm_accuracy_is_at_most_clean_accuracy(data_dir, checkpoint, tmp_path):
    results = _run(['--checkpoint', checkpoint, '--data-dir', data_dir, '--attack', 'fgsm', '--eps', '8/255'],
                   tmp_path)
    attack, = results['attacks']
    assert (attack['attack'], attack['eps'], attack['steps']) == ('fgsm', pytest.approx(8 / 255), 1)
    assert attack['top1'] <= results['clean']['top1']
    assert attack['clean_top1'] == pytest.approx(results['clean']['top1'], abs=1e-3)
    assert attack['count'] == CLASSES * PER_CLASS


def test_attack_refuses_a_model_in_train_mode():
    model = wrap_for_eval(timm.create_model('test_resnet', num_classes=CLASSES), (0.5,) * 3, (0.5,) * 3).train()
    batches = [(torch.rand(2, 3, SIZE, SIZE), torch.tensor([0, 1]))]
    with pytest.raises(EvaluationError, match='eval mode') as info:
        evaluate_attacks(model, batches, ['fgsm'], [8 / 255], progress=False)
    assert '\n' not in str(info.value)


def test_valid_labels_restrict_the_logits(data_dir, tmp_path):
    model = _head_biased(timm.create_model('test_resnet', num_classes=5), [0.0, 5.0, 0.0, 0.0, 10.0])
    path = tmp_path / 'five.pth.tar'
    torch.save({'state_dict': model.state_dict()}, path)
    labels = tmp_path / 'valid.txt'
    labels.write_text('0\n1\n2\n')
    common = ['--model', 'test_resnet', '--checkpoint', str(path), '--data-dir', data_dir, '--img-size', str(SIZE),
              '--num-classes', '5']
    class_map = tmp_path / 'classes.txt'
    class_map.write_text('0\n1\n2\n3\n4\n')  # 3 of the 5 classes have folders: the map says which they are
    assert _run([*common, '--class-map', str(class_map)], tmp_path)['clean']['top1'] == 0.0  # always class 4
    restricted = _run([*common, '--valid-labels', str(labels)], tmp_path)['clean']
    assert restricted['top1'] == pytest.approx(100.0 / CLASSES, abs=1e-3)  # always class 1 of 0..2


def test_config_file_sets_defaults(data_dir, checkpoint, tmp_path):
    config = tmp_path / 'eval.yaml'
    config.write_text(f'checkpoint: {checkpoint}\ndata_dir: {data_dir}\ncorrupt: [contrast]\nseverities: [2]\n')
    results = _run(['-c', str(config)], tmp_path)
    assert [(r['corruption'], r['severity']) for r in results['corruptions']] == [('contrast', 2)]


def test_hub_names_pass_through_to_timm_with_pretrained(monkeypatch):
    seen = {}

    def fake_create(name, **kwargs):
        seen.update(kwargs, name=name)
        return timm.create_model('test_resnet', num_classes=CLASSES)

    monkeypatch.setattr('timm_tenet.robustness.loading.create_tenet_model', fake_create)
    create_eval_model('local-dir:/models/digits', num_classes=None)
    assert seen['name'] == 'local-dir:/models/digits' and seen['pretrained'] is True
    assert 'num_classes' not in seen


@pytest.fixture
def broken_inputs(tmp_path_factory, imagenet_c, checkpoint):
    root = tmp_path_factory.mktemp('broken')
    missing = root / 'imagenet_c'
    for name in ('gaussian_noise',):
        for severity in (1, 2, 3, 5):
            _write_images(missing / name / str(severity), 1, np.random.default_rng(severity))
    mismatch = root / 'cifar_c'
    mismatch.mkdir()
    np.save(mismatch / 'labels.npy', np.zeros(9, dtype=np.uint8))
    np.save(mismatch / 'fog.npy', np.zeros((10, SIZE, SIZE, 3), dtype=np.uint8))
    truncated = root / 'truncated.pth.tar'
    truncated.write_bytes(Path(checkpoint).read_bytes()[:200])
    config = root / 'bad.yaml'
    config.write_text('batchsize: 4\n')
    return dict(missing=str(missing), mismatch=str(mismatch), truncated=str(truncated), config=str(config))


@pytest.mark.parametrize('case,argv,expected', [
    ('unknown corruption', ['--corrupt', 'gaussian_nois'], "unknown corruption 'gaussian_nois'"),
    ('released without corrupt', ['--corrupt-released'], '--corrupt-released stores the --corrupt batches'),
    ('severity 6', ['--corrupt', 'contrast', '--severities', '6'], "from 1 to 5, got '6'"),
    ('missing severity', ['--corruption-dir', '{missing}'], 'missing severity folder(s) 4'),
    ('count mismatch', ['--corruption-dir', '{mismatch}'], 'has 9 labels but'),
    ('unparsable eps', ['--attack', 'fgsm', '--eps', '8/O'], "cannot parse eps '8/O'"),
    ('corrupt checkpoint', ['--checkpoint', '{truncated}'], 'corrupt'),
    ('unknown config key', ['-c', '{config}'], "unknown key 'batchsize'"),
    ('unknown model', ['--model', 'resnet18x'], "did you mean 'resnet18'"),
])
def test_bad_input_is_a_one_line_error(case, argv, expected, broken_inputs, data_dir, checkpoint, caplog):
    argv = [a.format(**broken_inputs) for a in argv]
    if '--checkpoint' not in argv:
        argv += ['--checkpoint', checkpoint]
    message = _error(caplog, ['--data-dir', data_dir, *argv])
    assert expected in message and '\n' not in message
    if case == 'unknown corruption':
        assert 'gaussian_noise, shot_noise' in message  # lists the valid names


def test_script_exits_with_status_1_and_one_line(data_dir, checkpoint, monkeypatch, caplog):
    monkeypatch.setattr(sys, 'argv', ['validate.py', '--checkpoint', checkpoint, '--data-dir', data_dir,
                                      '--corrupt', 'contrast', '--severities', '0'])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / 'validate.py'), run_name='__main__')
    assert info.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']
    assert errors == ["corruption severity must be an integer from 1 to 5, got '0'"]


def test_results_file_is_replaced_atomically(tmp_path):
    path = tmp_path / 'results.json'
    write_results(str(path), {'clean': {'top1': 90.0}}, fmt='json')
    with pytest.raises(TypeError):
        write_results(str(path), {'clean': {'top1': object()}}, fmt='json')
    assert json.loads(path.read_text()) == {'clean': {'top1': 90.0}}
    assert os.listdir(tmp_path) == ['results.json']  # no temporary file left behind


def test_format_table_aligns_numbers_right():
    text = format_table([{'name': 'fgsm', 'top1': 5.0}, {'name': 'pgd', 'top1': 12.5}])
    assert text.splitlines() == ['name   top1', '----  -----', 'fgsm   5.00', 'pgd   12.50']
