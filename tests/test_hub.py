"""Hub export, push and loading: safetensors + config + card that load in timm_tenet and in stock timm.

Nothing here reaches the internet. Uploads and downloads go to ``MiniHub``, a local HTTP server that
speaks the part of the Hub API that ``huggingface_hub``'s own client code uses for ``whoami``,
``create_repo``, ``create_commit`` (README check, preupload, Git LFS batch + PUT, NDJSON commit),
``delete_repo`` and ``hf_hub_download``. Xet transfers are turned off, so the LFS protocol is the one used.
"""
import argparse
import base64
import csv
import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
import yaml
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file, save_file

import timm
from timm_tenet import RscConfig, RscTask, TenetConfig, TenetTask
from timm_tenet import hub
from timm_tenet.hub import EXPORT_FILES, ExportError, HubError
from timm_tenet.robustness.results import read_results

NUM_CLASSES = 5
CHANNELS = (8, 16, 32, 64)  # a ResNet-18 of 0.2 M parameters
REPO = 'org/resnet18_tenet.tiny'
TENET = TenetConfig(num_groups=2, warmup_steps=0, period=1, only_correct=False)
TOKENS = {'hf_write': 'write', 'hf_read': 'read'}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}'  # nothing listens there once the socket is closed


# ---------------------------------------------------------------------------------------------------------------
# A local Hub


class MiniHub:
    """Enough of the Hub's HTTP API for ``huggingface_hub`` uploads and downloads of model repos."""

    def __init__(self):
        self.repos = {}  # repo_id -> {'private': bool, 'files': {path: bytes}, 'sha': str}
        self.lfs = {}  # sha256 -> bytes
        self.requests = []  # (method, path)
        self.commits = []  # (repo_id, {path: 'file' | 'lfsFile'})
        self.fail_commit = False
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}'
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def reset(self):
        self.repos.clear()
        self.lfs.clear()
        self.requests.clear()
        self.commits.clear()
        self.fail_commit = False

    def _handler(self):
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
                    data = b''
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get('Content-Length') or 0))

            def _send(self, code, payload=None, headers=None, body=None):
                data = body if body is not None else json.dumps(payload if payload is not None else {}).encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header('Content-Type', 'application/json' if body is None else 'application/octet-stream')
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(data)

            def _error(self, code, message, error_code=None):
                headers = {'X-Error-Message': message}
                if error_code:
                    headers['X-Error-Code'] = error_code
                self._send(code, {'error': message}, headers)

            def _token(self):
                auth = self.headers.get('Authorization', '')
                return TOKENS.get(auth[len('Bearer '):]) if auth.startswith('Bearer ') else None

            def _route(self):
                path = unquote(urlsplit(self.path).path)
                hub_.requests.append((self.command, path))
                parts = path.strip('/').split('/')
                if path == '/api/whoami-v2':
                    if self._token() is None:
                        return self._error(401, 'Invalid credentials in Authorization header')
                    return self._send(200, {'type': 'user', 'name': 'tester', 'orgs': [{'name': 'org'}]})
                if path == '/api/repos/create':
                    return self._create()
                if path == '/api/repos/delete':
                    body = json.loads(self._body())
                    hub_.repos.pop(f"{body['organization']}/{body['name']}", None)
                    return self._send(200)
                if path == '/api/validate-yaml':
                    content = json.loads(self._body())['content']
                    yaml.safe_load(content.split('---\n')[1])
                    return self._send(200, {'errors': [], 'warnings': []})
                if parts[:2] == ['api', 'models'] and len(parts) >= 6 and parts[4] in ('preupload', 'commit'):
                    repo_id = '/'.join(parts[2:4])
                    if repo_id not in hub_.repos:
                        return self._error(404, 'Repository not found', 'RepoNotFound')
                    if self._token() != 'write':
                        return self._error(403, 'You do not have write access to this repository')
                    return self._preupload() if parts[4] == 'preupload' else self._commit(repo_id)
                if len(parts) == 6 and parts[1].endswith('.git') and parts[2:] == ['info', 'lfs', 'objects', 'batch']:
                    return self._lfs_batch()
                if parts[0] == 'lfs-upload' and self.command == 'PUT':
                    data = self._body()
                    if hashlib.sha256(data).hexdigest() != parts[1]:
                        return self._error(400, 'sha256 mismatch')
                    hub_.lfs[parts[1]] = data
                    return self._send(200)
                if len(parts) >= 5 and parts[2] == 'resolve':
                    return self._resolve('/'.join(parts[:2]), '/'.join(parts[4:]))
                return self._error(404, f'no route {self.command} {path}')

            def _create(self):
                body = json.loads(self._body())
                repo_id = f"{body['organization']}/{body['name']}" if body.get('organization') else body['name']
                if self._token() is None:
                    return self._error(401, 'Invalid credentials in Authorization header')
                if self._token() != 'write':
                    return self._error(403, 'You do not have the rights to create a model under this namespace')
                if repo_id in hub_.repos:
                    return self._error(409, 'You already created this model repo')
                hub_.repos[repo_id] = {'private': body.get('visibility') == 'private', 'files': {}, 'sha': None}
                return self._send(200, {'url': f'{hub_.url}/{repo_id}', 'name': repo_id})

            def _preupload(self):
                files = json.loads(self._body())['files']
                return self._send(200, {'files': [
                    {'path': f['path'], 'uploadMode': 'lfs' if f['path'].endswith('.safetensors') else 'regular',
                     'shouldIgnore': False} for f in files]})

            def _lfs_batch(self):
                objects = json.loads(self._body())['objects']
                answer = []
                for o in objects:
                    entry = {'oid': o['oid'], 'size': o['size'], 'authenticated': True}
                    if o['oid'] not in hub_.lfs:
                        entry['actions'] = {'upload': {'href': f"{hub_.url}/lfs-upload/{o['oid']}"}}
                    answer.append(entry)
                return self._send(200, {'transfer': 'basic', 'objects': answer})

            def _commit(self, repo_id):
                lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
                if hub_.fail_commit:
                    return self._error(422, 'commit refused by the test')
                files, kinds = {}, {}
                for line in lines:
                    value = line['value']
                    if line['key'] == 'file':
                        files[value['path']] = base64.b64decode(value['content'])
                    elif line['key'] == 'lfsFile':
                        if value['oid'] not in hub_.lfs:
                            return self._error(422, f"LFS object {value['oid']} was never uploaded")
                        files[value['path']] = hub_.lfs[value['oid']]
                    else:
                        continue
                    kinds[value['path']] = line['key']
                repo = hub_.repos[repo_id]
                repo['files'].update(files)
                repo['sha'] = hashlib.sha1(repr(sorted((k, hashlib.sha256(v).hexdigest())
                                                       for k, v in repo['files'].items())).encode()).hexdigest()
                hub_.commits.append((repo_id, kinds))
                return self._send(200, {'commitUrl': f"{hub_.url}/{repo_id}/commit/{repo['sha']}",
                                        'commitOid': repo['sha'], 'pullRequestUrl': None})

            def _resolve(self, repo_id, filename):
                repo = hub_.repos.get(repo_id)
                if repo is None or repo['sha'] is None:
                    return self._error(404, 'Repository not found', 'RepoNotFound')
                if filename not in repo['files']:
                    return self._error(404, 'Entry not found', 'EntryNotFound')
                data = repo['files'][filename]
                headers = {'X-Repo-Commit': repo['sha'], 'ETag': f'"{hashlib.sha256(data).hexdigest()}"'}
                return self._send(200, headers=headers, body=data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _route

        return Handler


@contextmanager
def hub_env(endpoint: str, cache: Path, offline: bool = False):
    """Point ``huggingface_hub`` at ``endpoint`` with its own cache and no saved token; LFS instead of Xet."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf_constants, 'ENDPOINT', endpoint)
        mp.setattr(hf_constants, 'HUGGINGFACE_CO_URL_TEMPLATE', endpoint + '/{repo_id}/resolve/{revision}/{filename}')
        mp.setattr(hf_constants, 'HF_HUB_CACHE', str(cache))
        mp.setattr(hf_constants, 'HF_TOKEN_PATH', str(cache / 'no-token'))
        mp.setattr(hf_constants, 'HF_HUB_OFFLINE', offline)
        mp.setattr(hf_constants, 'HF_HUB_DISABLE_XET', True)
        for name in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_OIDC_RESOURCE'):
            mp.delenv(name, raising=False)
        yield mp


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(autouse=True)
def no_internet(tmp_path):
    """Every test runs against a closed local port, a temporary cache and no token, unless it says otherwise."""
    with hub_env(closed_port_url(), tmp_path / 'hf-cache') as mp:
        yield mp


@pytest.fixture(scope='module')
def minihub():
    server = MiniHub()
    yield server
    server.close()


@pytest.fixture(scope='module')
def inputs():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(123))


def reference_logits(state_dict, x):
    model = timm.create_model('resnet18', num_classes=NUM_CLASSES, channels=CHANNELS)
    model.load_state_dict(state_dict)
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A few TENET steps of a tiny resnet18_tenet, saved the way timm's checkpoint saver does."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18_tenet', num_classes=NUM_CLASSES, channels=CHANNELS)
    task = TenetTask(model, TENET, verbose=False)
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.05, momentum=0.9)
    task.train()
    for _ in range(3):
        out = task(torch.randn(4, 3, 32, 32), torch.randint(0, NUM_CLASSES, (4,)))
        optimizer.zero_grad()
        out['loss'].backward()
        optimizer.step()
    assert 'loss_inhibited' in out  # TENET steps ran
    args = argparse.Namespace(
        model='resnet18_tenet', num_classes=NUM_CLASSES, model_kwargs={'channels': CHANNELS}, img_size=32,
        input_size=None, in_chans=None, mean=None, std=None, crop_pct=None, interpolation='', gp=None, bn_eps=None,
        dataset='torch/cifar10', data_dir='/home/someone/private/cifar', lr=0.05, epochs=1,
    )
    state_dict = {k: v.detach().clone() for k, v in task.get_eval_model().state_dict().items()}
    ema = {k: v + 0.01 if v.is_floating_point() else v.clone() for k, v in state_dict.items()}
    path = tmp_path_factory.mktemp('train') / 'model_best.pth.tar'
    torch.save({
        'epoch': 2, 'arch': 'resnet18_tenet', 'version': 2, 'args': args, 'metric': 42.5,
        'optimizer': optimizer.state_dict(), 'state_dict': state_dict, 'state_dict_ema': ema,
        'task_state': task.get_task_state(),
    }, path)
    return dict(path=path, state_dict=state_dict, ema=ema)


@pytest.fixture(scope='module')
def results_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp('results')
    nested = {
        'model': 'resnet18_tenet', 'top1': 71.25, 'top1_err': 28.75, 'top5': 90.5, 'top5_err': 9.5,
        'param_count': 0.19, 'img_size': 32,
        'corruptions': [
            {'corruption': 'gaussian_noise', 'severity': 1, 'top1_err': 40.5},
            {'corruption': 'gaussian_noise', 'severity': 2, 'top1_err': 45.25},
            {'corruption': 'fog', 'severity': 1, 'top1_err': 33.75},
            {'corruption': 'fog', 'severity': 2, 'top1_err': 36.125},
        ],
        'summary': {'mce': 81.3, 'relative_mce': 99.1, 'mean_corruption_error': 38.90625},
        'attacks': [{'attack': 'fgsm', 'eps': 0.0314, 'top1_err': 66.6},
                    {'attack': 'pgd', 'eps': 0.0314, 'steps': 10, 'top1_err': 80.1}],
    }
    json_path = folder / 'results.json'
    json_path.write_text(json.dumps(nested))
    csv_path = folder / 'results.csv'
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, ['model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size'])
        writer.writeheader()
        writer.writerow(dict(model='resnet18_tenet.ema', top1=70.125, top1_err=29.875, top5=89.0, top5_err=11.0,
                             param_count=0.19, img_size=32))
    return [json_path, csv_path]


@pytest.fixture(scope='module')
def exported(checkpoint, results_files, tmp_path_factory):
    """The CLI's --dry-run export of the checkpoint, with both results files."""
    folder = tmp_path_factory.mktemp('export') / 'resnet18_tenet.tiny'
    rc = hub.main(['push', '--checkpoint', str(checkpoint['path']), '--repo-id', REPO, '--dry-run', str(folder),
                   '--results-file', str(results_files[0]), '--results-file', str(results_files[1]),
                   '--train-command', 'python train.py --model resnet18_tenet --tenet-groups 2'])
    assert rc == 0
    return folder


@pytest.fixture(scope='module')
def pushed(minihub, checkpoint, results_files, inputs, tmp_path_factory):
    """Push to the local Hub with the real client, then download it back with ``hf-hub:``."""
    minihub.reset()
    cache = tmp_path_factory.mktemp('hf-cache')
    with hub_env(minihub.url, cache):
        url = hub.push(checkpoint['path'], REPO, token='hf_write', results_files=results_files,
                       train_command='python train.py --model resnet18_tenet --tenet-groups 2')
        requests = list(minihub.requests)
        model = hub.create_model(f'hf-hub:{REPO}', pretrained=True).eval()
        with torch.no_grad():
            logits = model(inputs)
    return dict(url=url, cache=cache, requests=requests, logits=logits, tenet_cfg=model.tenet_cfg,
                files=dict(minihub.repos[REPO]['files']), commits=list(minihub.commits))


# ---------------------------------------------------------------------------------------------------------------
# Round trip


def test_dry_run_export_loads_with_local_dir_and_gives_identical_logits(exported, checkpoint, inputs):
    model = timm.create_model(f'local-dir:{exported}', pretrained=True).eval()
    with torch.no_grad():
        logits = model(inputs)
    assert type(model).__name__ == 'ResNet' and model.num_classes == NUM_CLASSES
    assert torch.equal(logits, reference_logits(checkpoint['state_dict'], inputs))


def test_dry_run_folder_holds_exactly_safetensors_config_and_card_and_no_pickle(exported):
    assert sorted(p.name for p in exported.iterdir()) == sorted(EXPORT_FILES)
    for path in exported.iterdir():
        head = path.read_bytes()[:2]
        assert head != b'PK' and head[:1] != b'\x80', f'{path.name} looks like a pickle / torch.save file'
    raw = (exported / 'model.safetensors').read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], 'little')])
    assert 'fc.weight' in header and header['fc.weight']['shape'] == [NUM_CLASSES, CHANNELS[-1]]


def test_config_names_the_base_architecture_and_keeps_tenet_in_an_extra_field(exported):
    config = json.loads((exported / 'config.json').read_text())
    assert config['architecture'] == 'resnet18'
    assert config['num_classes'] == NUM_CLASSES
    assert config['model_args']['channels'] == list(CHANNELS)
    assert not any(k.startswith('tenet') for k in config['model_args'])
    pcfg = config['pretrained_cfg']
    assert pcfg['input_size'] == [3, 32, 32] and pcfg['mean'] == [0.485, 0.456, 0.406] and 'crop_pct' in pcfg
    assert 'hf_hub_id' not in pcfg and 'url' not in pcfg
    assert config['tenet']['model'] == 'resnet18_tenet'
    assert config['tenet']['config'] == TENET.to_dict()
    assert config['tenet']['step'] == 3
    assert 'requires' not in config['tenet']


def test_create_model_restores_the_tenet_settings_of_an_export(exported):
    model = hub.create_model(f'local-dir:{exported}', pretrained=True)
    assert model.tenet_cfg == TENET


def test_stock_timm_without_timm_tenet_loads_the_export_and_the_cached_hub_copy(exported, pushed, inputs, tmp_path):
    save_file({'x': inputs}, tmp_path / 'inputs.safetensors')
    script = f"""
import sys
sys.modules['timm_tenet'] = None  # importing timm_tenet would fail
import torch, timm
from safetensors.torch import load_file, save_file
torch.set_num_threads(1)
x = load_file({str(tmp_path / 'inputs.safetensors')!r})['x']
out = {{}}
for key, name in (('local', {'local-dir:' + str(exported)!r}), ('hub', 'hf-hub:{REPO}')):
    with torch.no_grad():
        out[key] = timm.create_model(name, pretrained=True).eval()(x)
save_file(out, {str(tmp_path / 'logits.safetensors')!r})
assert sys.modules['timm_tenet'] is None
print('stock timm', timm.__version__)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING'))}
    env.update(HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(pushed['cache']), HF_ENDPOINT=closed_port_url(),
               HF_TOKEN_PATH=str(tmp_path / 'no-token'))
    run = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    logits = load_file(tmp_path / 'logits.safetensors')
    assert torch.equal(logits['local'], pushed['logits'])
    assert torch.equal(logits['hub'], pushed['logits'])


# ---------------------------------------------------------------------------------------------------------------
# Card


def split_card(text):
    assert text.startswith('---\n')
    _, front, body = text.split('---\n', 2)
    return yaml.safe_load(front), body


def test_card_is_yaml_front_matter_with_timm_metadata_plus_markdown(exported):
    meta, body = split_card((exported / 'README.md').read_text())
    assert meta['library_name'] == 'timm'
    assert meta['tags'] == ['image-classification', 'timm', 'tenet', 'robustness']
    assert meta['license'] == 'apache-2.0'
    assert meta['datasets'] == ['cifar10']
    assert meta['pipeline_tag'] == 'image-classification'
    assert body.startswith('# Model card for resnet18_tenet.tiny')
    assert "timm.create_model('hf-hub:org/resnet18_tenet.tiny', pretrained=True)" in body
    assert '| num_groups | 2 |' in body and '| only_correct | False |' in body
    assert 'python train.py --model resnet18_tenet --tenet-groups 2' in body
    assert '/home/someone' not in body and 'data_dir: <local path>' in body


def test_card_carries_the_numbers_of_the_results_files(exported):
    _, body = split_card((exported / 'README.md').read_text())
    clean = body.split('### Clean accuracy')[1].split('###')[0]
    assert '| resnet18_tenet | 71.25 | 28.75 | 90.5 | 9.5 |' in clean  # from the JSON file
    assert '| resnet18_tenet.ema | 70.125 | 29.875 | 89 | 11 |' in clean  # from the CSV file
    corruptions = body.split('### Corruptions')[1].split('###')[0]
    assert '| gaussian_noise | 40.5 | 45.25 | 42.875 |' in corruptions
    assert '| fog | 33.75 | 36.125 | 34.9375 |' in corruptions
    summary = body.split('### Corruption summary')[1].split('###')[0]
    assert '| mce | 81.3 |' in summary and '| mean_corruption_error | 38.90625 |' in summary
    attacks = body.split('### Adversarial attacks')[1].split('##')[0]
    assert '| fgsm | 0.0314 |  | 66.6 |' in attacks and '| pgd | 0.0314 | 10 | 80.1 |' in attacks


def test_results_without_severities_or_known_keys_still_render(tmp_path):
    path = tmp_path / 'odd.json'
    path.write_text(json.dumps({'corruption_errors': [{'corruption': 'snow', 'ce': 0.75}], 'note': 'x|y'}))
    rows = read_results(path)
    card = hub.model_card({'architecture': 'resnet18', 'num_classes': 3}, 'a/b', results=rows)
    assert '| snow | 0.75 |' in card and 'x\\|y' in card


def test_sectioned_results_render_the_same_from_json_and_csv(tmp_path):
    """validate.py's layout: named sections in JSON, one row per line with a 'section' column in CSV."""
    sections = {
        'clean': {'model': 'local-dir:/home/someone/export', 'top1': 93.1, 'top1_err': 6.9,
                  'checkpoint': '/home/someone/out/model_best.pth.tar'},
        'corruptions': [{'corruption': 'fog', 'severity': 1, 'top1_err': 20.5},
                        {'corruption': 'fog', 'severity': 2, 'top1_err': 30.25}],
        'corruption_summary': {'mean_corruption_error': 25.375, 'mce': None},
        'attacks': [{'attack': 'fgsm', 'eps': 0.0314, 'top1_err': 59.0}],
    }
    (tmp_path / 'r.json').write_text(json.dumps(sections))
    header = ['section', 'model', 'top1', 'top1_err', 'checkpoint', 'corruption', 'severity',
              'mean_corruption_error', 'mce', 'attack', 'eps']
    with open(tmp_path / 'r.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        for section, value in sections.items():
            for row in [value] if isinstance(value, dict) else value:
                writer.writerow({'section': section, **row})
    cards = [hub.model_card({'architecture': 'resnet18', 'num_classes': 3}, 'a/b', results=read_results(p))
             for p in (tmp_path / 'r.json', tmp_path / 'r.csv')]
    assert cards[0] == cards[1]
    assert '| local-dir:export | 93.1 | 6.9 | model_best.pth.tar |' in cards[0]
    assert '| fog | 20.5 | 30.25 | 25.375 |' in cards[0] and '| mean_corruption_error | 25.375 |' in cards[0]
    assert '| fgsm | 0.0314 | 59 |' in cards[0] and 'section' not in cards[0] and '/home/someone' not in cards[0]


# ---------------------------------------------------------------------------------------------------------------
# Upload through the real huggingface_hub client


def test_push_uploads_the_dry_run_files_in_one_commit(pushed, exported):
    assert pushed['url'].endswith('/commit/' + pushed['url'].rsplit('/', 1)[1])
    assert len(pushed['commits']) == 1
    repo_id, kinds = pushed['commits'][0]
    assert repo_id == REPO
    assert kinds == {'model.safetensors': 'lfsFile', 'config.json': 'file', 'README.md': 'file'}
    for name in EXPORT_FILES:
        assert pushed['files'][name] == (exported / name).read_bytes(), name
    calls = [(m, p.split('/')[-1] if 'lfs-upload' in p else p) for m, p in pushed['requests']]
    sha = hashlib.sha256(pushed['files']['model.safetensors']).hexdigest()
    for call in [('GET', '/api/whoami-v2'), ('POST', '/api/repos/create'), ('POST', '/api/validate-yaml'),
                 ('POST', f'/api/models/{REPO}/preupload/main'),
                 ('POST', f'/{REPO}.git/info/lfs/objects/batch'), ('PUT', sha),
                 ('POST', f'/api/models/{REPO}/commit/main')]:
        assert call in calls, call


def test_hf_hub_download_gives_identical_logits_and_tenet_settings(pushed, checkpoint, inputs):
    assert torch.equal(pushed['logits'], reference_logits(checkpoint['state_dict'], inputs))
    assert pushed['tenet_cfg'] == TENET


def test_push_after_training_takes_model_best_and_the_token_from_hf_token(minihub, checkpoint, no_internet):
    minihub.reset()
    no_internet.setattr(hf_constants, 'ENDPOINT', minihub.url)
    no_internet.setenv('HF_TOKEN', 'hf_write')
    url = hub.push_after_training('org/after', checkpoint['path'].parent, train_command='python train.py -c x.yaml')
    assert url.startswith(minihub.url + '/org/after/commit/')
    card = minihub.repos['org/after']['files']['README.md'].decode()
    assert 'python train.py -c x.yaml' in card


def test_failed_commit_leaves_no_repository_behind(minihub, checkpoint):
    minihub.reset()
    minihub.fail_commit = True
    with pytest.raises(HubError, match=r'cannot push to org/fails: the Hub answered 422') as e:
        hub.push(checkpoint['path'], 'org/fails', token='hf_write', endpoint=minihub.url)
    assert '\n' not in str(e.value)
    assert ('POST', '/api/repos/create') in minihub.requests and minihub.repos == {}


@pytest.mark.parametrize('token, message', [
    (None, 'no Hugging Face token; run `hf auth login` or set HF_TOKEN'),
    ('hf_wrong', r'the Hub rejected the token \(401 Unauthorized\)'),
    ('hf_read', r'the token is not allowed to \(403 Forbidden'),
])
def test_push_explains_authentication_errors_in_one_line(minihub, checkpoint, token, message):
    minihub.reset()
    with pytest.raises(HubError, match=message) as e:
        hub.push(checkpoint['path'], 'org/auth', token=token, endpoint=minihub.url)
    assert '\n' not in str(e.value)
    assert minihub.repos == {}


def test_check_push_ready_fails_fast_before_training(no_internet, minihub):
    with pytest.raises(ExportError, match='malformed repo id'):
        hub.check_push_ready('no-namespace')
    with pytest.raises(HubError, match='no Hugging Face token'):
        hub.check_push_ready(REPO)
    no_internet.setenv('HF_TOKEN', 'hf_anything')
    with pytest.raises(HubError, match=r'the Hugging Face Hub at http://127.0.0.1:\d+ cannot be reached within 5 s'):
        hub.check_push_ready(REPO)
    with pytest.raises(HubError, match=r'the Hub rejected the token \(401'):
        hub.check_push_ready(REPO, endpoint=minihub.url)
    assert hub.check_push_ready(REPO, token='hf_write', endpoint=minihub.url) == REPO
    no_internet.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(HubError, match='HF_HUB_OFFLINE=1 is set'):
        hub.check_push_ready(REPO)


def test_push_offline_fails_in_one_line_and_leaves_nothing(checkpoint, no_internet, tmp_path):
    no_internet.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    no_internet.setattr('tempfile.tempdir', str(tmp_path))
    with pytest.raises(HubError, match='HF_HUB_OFFLINE=1 is set and uploads need the network') as e:
        hub.push(checkpoint['path'], REPO, token='hf_write')
    assert '\n' not in str(e.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('timm_tenet_push_')]


def test_push_without_network_fails_in_one_line_and_leaves_nothing(checkpoint, no_internet, tmp_path):
    no_internet.setattr('tempfile.tempdir', str(tmp_path))
    with pytest.raises(HubError, match=r'cannot be reached \(no network\?\); nothing was uploaded') as e:
        hub.push(checkpoint['path'], REPO, token='hf_write')
    assert '\n' not in str(e.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('timm_tenet_push_')]


def test_download_offline_without_cache_fails_in_one_line(no_internet):
    no_internet.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(HubError, match='HF_HUB_OFFLINE=1 is set and org/absent is not in the local') as e:
        hub.create_model('hf-hub:org/absent', pretrained=True)
    assert '\n' not in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# Other checkpoints


def test_use_ema_exports_the_ema_weights(checkpoint, inputs, tmp_path):
    folder = hub.export_to_folder(checkpoint['path'], tmp_path / 'ema', REPO, use_ema=True)
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(model(inputs), reference_logits(checkpoint['ema'], inputs))
    assert 'EMA weights of epoch 2' in (folder / 'README.md').read_text()


def test_bare_state_dict_exports_with_model_and_reads_classes_from_the_classifier(checkpoint, tmp_path):
    bare = tmp_path / 'bare.pth'
    torch.save(checkpoint['state_dict'], bare)
    with pytest.raises(ExportError, match='does not name its architecture .*: pass --model'):
        hub.export_to_folder(bare, tmp_path / 'a', REPO)
    folder = hub.export_to_folder(bare, tmp_path / 'b', REPO, model_name='resnet18_tenet',
                                  model_kwargs={'channels': CHANNELS})
    config = json.loads((folder / 'config.json').read_text())
    assert config['num_classes'] == NUM_CLASSES and config['tenet']['config']['num_groups'] == 6  # registered default


def test_cifar_export_says_it_needs_timm_tenet(tmp_path):
    model = timm.create_model('cifar_resnet18_tenet', num_classes=3, channels=CHANNELS)
    path = tmp_path / 'cifar.safetensors'
    save_file(model.state_dict(), path)
    folder = hub.export_to_folder(path, tmp_path / 'out', 'org/cifar', model_name='cifar_resnet18_tenet',
                                  model_kwargs={'channels': CHANNELS})
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'cifar_resnet18' and config['tenet']['requires'] == 'timm_tenet'
    assert 'import timm_tenet  # registers cifar_resnet18' in (folder / 'README.md').read_text()


def test_rsc_trained_checkpoint_is_exported_as_rsc_not_with_the_tenet_defaults_of_its_name(tmp_path, inputs):
    torch.manual_seed(0)
    model = timm.create_model('resnet18_tenet', num_classes=NUM_CLASSES, channels=CHANNELS)
    cfg = RscConfig(spatial_prob=1.0)
    task = RscTask(model, cfg)
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.05)
    task.train()
    for _ in range(2):
        loss = task(torch.randn(4, 3, 32, 32), torch.randint(0, NUM_CLASSES, (4,)))['loss']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state_dict = {k: v.detach().clone() for k, v in task.get_eval_model().state_dict().items()}
    path = tmp_path / 'rsc.pth.tar'
    torch.save({'epoch': 1, 'arch': 'resnet18_tenet', 'args': {'model': 'resnet18_tenet', 'rsc': True},
                'state_dict': state_dict, 'task_state': task.get_task_state()}, path)
    folder = hub.export_to_folder(path, tmp_path / 'out', 'org/resnet18_rsc', model_kwargs={'channels': CHANNELS})

    config = json.loads((folder / 'config.json').read_text())
    assert config['tenet']['method'] == 'rsc' and config['tenet']['rsc_config'] == cfg.to_dict()
    assert config['tenet']['config'] is None  # not the TENET defaults that resnet18_tenet carries
    assert config['pretrained_cfg']['paper_ids'] == config['tenet']['paper'] == 'arXiv:2007.02454'
    assert config['pretrained_cfg']['notes'][0].startswith('Trained with RSC as resnet18_tenet')
    card = (folder / 'README.md').read_text()
    assert '## RSC settings' in card and '| spatial_prob | 1 |' in card and 'TENET settings' not in card
    assert 'trained with RSC (Representation Self-Challenging' in card and 'huang2020rsc' in card
    assert 'liu2021tenet' not in card and 'tenet_cfg' not in card
    loaded = hub.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert not hasattr(loaded, 'tenet_cfg')
    with torch.no_grad():
        assert torch.equal(loaded(inputs), reference_logits(state_dict, inputs))


# ---------------------------------------------------------------------------------------------------------------
# Bad input


class Unsafe:
    pass


def test_missing_or_foreign_checkpoint_is_refused_in_one_line(tmp_path):
    (tmp_path / 'notes.txt').write_text('hello world')
    torch.save({'thing': Unsafe()}, tmp_path / 'unsafe.pt')
    with open(tmp_path / 'pickled.pkl', 'wb') as f:
        pickle.dump({'state_dict': {}}, f)  # plain pickle, not torch.save
    torch.save([torch.zeros(1)], tmp_path / 'list.pt')
    torch.save({'epoch': 3, 'optimizer': {}}, tmp_path / 'no_weights.pth.tar')
    for name, message in [
        ('absent.pth.tar', 'checkpoint not found'),
        ('notes.txt', 'is not a PyTorch checkpoint'),
        ('unsafe.pt', 'refusing to load .* weights_only loading does not run'),
        ('pickled.pkl', 'is not a PyTorch checkpoint'),
        ('list.pt', 'is not a checkpoint: it holds a list'),
        ('no_weights.pth.tar', r"is not a timm checkpoint: no 'state_dict' of tensors \(top-level keys: epoch"),
    ]:
        with pytest.raises(ExportError, match=message) as e:
            hub.export_to_folder(tmp_path / name, tmp_path / 'out', REPO)
        assert '\n' not in str(e.value)
    assert not (tmp_path / 'out').exists()


def test_num_classes_that_differs_from_the_classifier_is_refused(checkpoint, tmp_path):
    with pytest.raises(ExportError, match=r"--num-classes 7 does not match the checkpoint: its classifier "
                                          r"'fc.weight' has 5 outputs"):
        hub.export_to_folder(checkpoint['path'], tmp_path / 'out', REPO, num_classes=7)
    with pytest.raises(ExportError, match="has no EMA weights"):
        bare = tmp_path / 'bare.pth'
        torch.save({'state_dict': checkpoint['state_dict'], 'arch': 'resnet18_tenet'}, bare)
        hub.export_to_folder(bare, tmp_path / 'out', REPO, use_ema=True)


def test_weights_of_another_shape_are_refused(checkpoint, tmp_path):
    with pytest.raises(ExportError, match=r"do not fit resnet18_tenet with 5 classes: .*shape-mismatched"):
        hub.export_to_folder(checkpoint['path'], tmp_path / 'out', REPO, model_kwargs={'channels': (8, 16, 32, 32)})


@pytest.mark.parametrize('repo_id', ['resnet18_tenet', 'org/sub/name', 'org/bad..name', 'org/-dash', 'org/with space',
                                     'org/name.git', ''])
def test_malformed_repo_id_is_refused_before_any_work(repo_id, tmp_path):
    with pytest.raises(ExportError, match='malformed repo id'):
        hub.push(tmp_path / 'absent.pth.tar', repo_id, dry_run=tmp_path / 'out')


def test_non_empty_dry_run_folder_needs_overwrite_and_overwrite_replaces_only_an_export(checkpoint, exported,
                                                                                        tmp_path):
    folder = tmp_path / 'out'
    folder.mkdir()
    (folder / 'config.json').write_text('{}')
    (folder / 'stale.bin').write_text('x')
    with pytest.raises(ExportError, match="is not empty .*pass --overwrite"):
        hub.push(checkpoint['path'], REPO, dry_run=folder)
    with pytest.raises(ExportError, match='--overwrite replaces only a previous export.*stale.bin'):
        hub.push(checkpoint['path'], REPO, dry_run=folder, overwrite=True)
    (folder / 'stale.bin').unlink()
    hub.push(checkpoint['path'], REPO, dry_run=folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == sorted(EXPORT_FILES)
    assert (folder / 'model.safetensors').read_bytes() == (exported / 'model.safetensors').read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no temporary folders left


def test_cli_reports_bad_input_as_one_error_line(checkpoint, tmp_path, capsys):
    rc = hub.main(['push', '--checkpoint', str(checkpoint['path']), '--repo-id', 'org/x', '--num-classes', '9',
                   '--dry-run', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith('error: --num-classes 9 does not match') and err.count('\n') == 1
    assert not (tmp_path / 'out').exists()
