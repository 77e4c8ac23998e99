"""``python -m timm_tenet.demo`` runs the embedded default recipe (shrunk here to a few steps)."""
import json
from pathlib import Path

import yaml

from timm_tenet import demo
from timm_tenet.robustness.corruptions import CORRUPTIONS


def test_demo_trains_the_digits_recipe_and_reports_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TIMM_TENET_CACHE', str(tmp_path / 'cache'))
    status = demo.main(['--output', str(tmp_path / 'out'), '--epochs', '1', '--train-split', 'train[:64]',
                        '--val-split', 'validation[:32]', '--tenet-warmup-steps', '0', '--log-interval', '1',
                        '--no-progress',
                        '--severities', '5', '--attack-samples', '16'])
    assert status == 0
    printed = capsys.readouterr().out
    assert 'TENET training of cifar_resnet18_tenet on digits: 1 epochs' in printed
    assert 'validation top-1 ' in printed
    assert 'test error: clean ' in printed and 'FGSM 8/255' in printed and 'PGD 8/255' in printed
    out = tmp_path / 'out' / 'digits_resnet18_tenet'
    saved = yaml.safe_load((out / 'args.yaml').read_text())
    assert saved['model'] == 'cifar_resnet18_tenet' and saved['tenet'] is True
    assert saved['config'] == str(demo.find_recipe())
    assert Path(saved['data_dir']) == tmp_path / 'cache' / 'digits32'
    assert (out / 'model_best.pth.tar').is_file()
    robustness = json.loads((out / 'robustness.json').read_text())
    assert len(robustness['corruptions']) == len(CORRUPTIONS)
    assert robustness['clean']['top1_err'] + robustness['clean']['top1'] == 100
