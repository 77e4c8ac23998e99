"""The digits robustness study's bookkeeping: per-run metrics, mean +- std, table, plot and resume.

Training and evaluation are the real train.py / validate.py (tested elsewhere); here they are replaced by
synthetic results so the summary arithmetic can be checked exactly.
"""
import importlib.util
import json
import logging
import statistics
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip('matplotlib')

STUDY_PATH = Path(__file__).resolve().parents[1] / 'benchmarks' / 'robustness_study.py'
EPS = ['2/255', '8/255']


@pytest.fixture
def study():
    spec = importlib.util.spec_from_file_location('robustness_study', STUDY_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(clean_err: float, corruption_err: float, attack_err: float) -> dict:
    """validate.py's JSON shape: corruption error grows by 1 point per severity, attacks by eps."""
    corruptions = [{'corruption': name, 'severity': s, 'top1_err': corruption_err + s}
                   for name in ('gaussian_noise', 'contrast') for s in (1, 2, 3, 4, 5)]
    attacks = [{'attack': attack, 'eps_text': eps, 'top1_err': attack_err + 10 * i + (5 if attack == 'pgd' else 0)}
               for attack in ('fgsm', 'pgd') for i, eps in enumerate(EPS)]
    return {'clean': {'top1_err': clean_err}, 'corruptions': corruptions, 'attacks': attacks}


def test_run_metrics_averages_corruptions_and_names_attacks(study):
    metrics = study.run_metrics(_results(1.0, 10.0, 20.0))
    assert metrics['clean error'] == 1.0
    assert metrics['mean corruption error'] == pytest.approx(13.0)  # 10 + mean(1..5)
    assert metrics['corruption error s4'] == pytest.approx(14.0)
    assert metrics['FGSM error eps 2/255'] == 20.0 and metrics['PGD error eps 8/255'] == 35.0


def test_study_summarises_plots_and_resumes_without_retraining(study, tmp_path, monkeypatch):
    clean = {('baseline', 1): 2.0, ('baseline', 2): 4.0, ('TENET', 1): 1.0, ('TENET', 2): 2.0}
    trained = []

    def fake_train(variant, seed, output, epochs):
        trained.append((variant, seed))
        return {'run_dir': str(tmp_path / f'{variant}_{seed}'), 'train_s': 1.0}

    def fake_evaluate(run_dir, eps, pgd_steps, attack_samples):
        variant, seed = Path(run_dir).name.split('_')
        return {'results': _results(clean[(variant, int(seed))], 10.0, 20.0), 'eval_s': 2.0}

    monkeypatch.setattr(study, 'train', fake_train)
    monkeypatch.setattr(study, 'evaluate', fake_evaluate)
    monkeypatch.setattr(study, '_run', lambda what, fn, log_path: 0.5)  # Grad-CAM
    monkeypatch.setattr(study, 'prepare_digits', lambda: tmp_path)
    argv = ['--seeds', '1', '2', '--eps', *EPS, '--output', str(tmp_path / 'out')]

    study.main(argv)
    assert sorted(trained) == [('TENET', 1), ('TENET', 2), ('baseline', 1), ('baseline', 2)]
    out = tmp_path / 'out'
    results = json.loads((out / 'results.json').read_text())
    assert results['summary']['baseline']['clean error'] == {'mean': 3.0, 'std': pytest.approx(statistics.stdev([2, 4]))}
    assert results['difference_tenet_minus_baseline']['clean error'] == pytest.approx(1.5 - 3.0)
    assert results['wall_clock']['train_s'] == {'baseline': [1.0, 1.0], 'TENET': [1.0, 1.0]}
    assert '| clean error | 3.00 +- 1.41 | 1.50 +- 0.71 | -1.50 |' in (out / 'results.md').read_text()
    with Image.open(out / 'robustness.png') as png:
        assert png.size[0] > 800 and png.size[1] > 300

    trained.clear()
    study.main(argv)  # every run has its .run.json: nothing is trained again
    assert trained == []


def test_a_run_logs_to_its_file_and_a_failure_names_the_log(study, tmp_path):
    log = tmp_path / 'run.log'

    def fails():
        logging.getLogger('train').warning('epoch 0 done')
        print('table')
        raise RuntimeError('validate.py reported an error')

    handlers = list(logging.getLogger().handlers)
    with pytest.raises(SystemExit, match=f'evaluating x failed .*see {log}'):
        study._run('evaluating x', fails, str(log))
    assert log.read_text().splitlines() == ['epoch 0 done', 'table']
    assert logging.getLogger().handlers == handlers  # the run's handler is gone
