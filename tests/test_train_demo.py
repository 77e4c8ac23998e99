"""``python -m timm_tenet.demo`` runs the embedded default recipe (shrunk here to a few steps)."""
import json
import logging
from pathlib import Path

import yaml

from timm_tenet import demo
from timm_tenet.robustness.corruptions import CORRUPTIONS
from timm_tenet.utils.env import versions


def test_demo_trains_the_digits_recipe_and_reports_accuracy(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv('TIMM_TENET_CACHE', str(tmp_path / 'cache'))
    caplog.set_level(logging.INFO)
    earlier = tmp_path / 'out' / 'digits_resnet18_tenet'
    earlier.mkdir(parents=True)
    (earlier / 'last.pth.tar').write_bytes(b'an earlier demo')  # a second `make demo` must not overwrite it
    status = demo.main(['--output', str(tmp_path / 'out'), '--epochs', '1', '--train-split', 'train[:64]',
                        '--val-split', 'validation[:32]', '--tenet-warmup-steps', '0', '--log-interval', '1',
                        '--no-progress',
                        '--severities', '5', '--attack-samples', '16'])
    assert status == 0
    assert (earlier / 'last.pth.tar').read_bytes() == b'an earlier demo'
    out = tmp_path / 'out' / 'digits_resnet18_tenet-1'
    printed = capsys.readouterr().out.splitlines()  # validate.py's tables, then the demo's summary
    header = printed.index(f'make demo summary ({versions()})')
    rows = {line[2:].split('  ')[0]: line.split('  ')[-1].strip() for line in printed[header + 1:]}
    assert rows['training'].startswith('1 epochs in ')
    assert rows['test error, clean'].endswith('% (test split)')
    assert rows['test error, mean over corruptions'].endswith(f'% ({len(CORRUPTIONS)} corruption/severity pairs)')
    assert rows['test error, FGSM eps 8/255'].endswith('% (16 images)') and 'test error, PGD-10 eps 8/255' in rows
    assert rows['outputs'] == str(out / 'robustness.json')
    assert 'clean + 15 corruption/severity pairs: batch 1/' in caplog.text  # progress lines off a terminal
    saved = yaml.safe_load((out / 'args.yaml').read_text())
    assert saved['model'] == 'cifar_resnet18_tenet' and saved['tenet'] is True
    assert saved['config'] == str(demo.find_recipe())
    assert Path(saved['data_dir']) == tmp_path / 'cache' / 'digits32'
    assert (out / 'model_best.pth.tar').is_file()
    robustness = json.loads((out / 'robustness.json').read_text())
    assert len(robustness['corruptions']) == len(CORRUPTIONS)
    assert robustness['clean']['top1_err'] + robustness['clean']['top1'] == 100
