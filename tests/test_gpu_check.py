"""benchmarks/gpu_check.py: a clear exit without CUDA, the precision checks on CPU, and on CUDA when there is one."""
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'gpu_check.py'


def _load():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message shown without CUDA')
def test_gpu_check_without_cuda_says_so_and_exits_1(monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', [str(SCRIPT)])
    assert _load().main() == 1
    assert capsys.readouterr().out.startswith('gpu_check.py needs a CUDA device and torch.cuda.is_available() is False')


def _check(device):
    args = SimpleNamespace(model='resnet18_tenet', batch_size=4, img_size=64)
    rows = {row['precision']: row for row in _load().check_precisions(args, torch.device(device))}
    for row in rows.values():
        assert row['ids_same_features'] == 1.0 and row['mask_dtype'] == 'float32' and not row['skipped']
    assert rows['float32']['ids_step'] == 1.0 and rows['float32']['mask_max_diff'] == 0.0
    return rows


def test_precision_checks_on_cpu():
    assert set(_check('cpu')) == {'float32', 'bfloat16', 'float16'}


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_precision_checks_on_cuda_with_no_host_reads():
    assert set(_check('cuda')) == {'float32', 'tf32', 'bfloat16', 'float16'}
