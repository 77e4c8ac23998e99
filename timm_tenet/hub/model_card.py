"""The ``README.md`` model card of a TENET export: timm's own card (metadata block, model details, usage,
citation) with the TENET settings, the training command and arguments (local paths hidden), and tables of
``validate.py`` results. An export trained with RSC gets the same card naming RSC, its settings and paper."""
import math
import os
import shlex
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from timm.models._hub import generate_readme

from ..models.tenet_models import TENET_PAPER
from ..rsc import RSC_PAPER

__all__ = ['CARD_TAGS', 'DEFAULT_LICENSE', 'dataset_ids', 'model_card', 'training_method']

CARD_TAGS = ('image-classification', 'timm', 'tenet', 'robustness')
DEFAULT_LICENSE = 'apache-2.0'

_CITATION = """@inproceedings{liu2021tenet,
  title={Group-wise Inhibition based Feature Regularization for Robust Classification},
  author={Liu, Haozhe and Wu, Haoqian and Xie, Weicheng and Liu, Feng and Shen, Linlin},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year={2021}
}"""
_RSC_CITATION = """@inproceedings{huang2020rsc,
  title={Self-Challenging Improves Cross-Domain Generalization},
  author={Huang, Zeyi and Wang, Haohan and Xing, Eric P. and Huang, Dong},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2020}
}"""
# training arguments that hold local paths: the public card shows that they were set, not where
_LOCAL_PATH_KEYS = ('data', 'data_dir', 'output', 'resume', 'initial_checkpoint', 'pretrained_path', 'class_map')
# ... and those whose file name says something (the recipe): only the name is shown
_NAMED_FILE_KEYS = ('config',)
# result keys, in the order the card's tables show them
_CLEAN_KEYS = ('model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct', 'interpolation')
_ATTACK_KEYS = ('attack', 'eps', 'steps', 'step_size', 'restarts', 'top1', 'top1_err')
_SUMMARY_KEYS = ('mce', 'relative_mce', 'mean_corruption_error', 'mean_corruption_acc')
_CORRUPTION_METRICS = ('top1_err', 'top1', 'error', 'err', 'acc', 'accuracy')
_TIMM_DATASETS = {'torch/cifar10': 'cifar10', 'torch/cifar100': 'cifar100', 'torch/imagenet': 'imagenet-1k',
                  'torch/mnist': 'mnist', 'torch/fashion_mnist': 'fashion_mnist', 'torch/stl10': 'stl10'}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return 'nan' if math.isnan(v) else f'{v:.10g}'
    if isinstance(v, (list, tuple)):
        return '(' + ', '.join(_fmt(x) for x in v) + ')'
    return str(v).replace('|', '\\|').replace('\n', ' ')


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ['| ' + ' | '.join(_fmt(h) for h in header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(_fmt(c) if c is not None else '' for c in row) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def _columns(rows: Sequence[Dict[str, Any]], preferred: Sequence[str]) -> List[str]:
    seen = [k for k in preferred if any(k in r for r in rows)]
    for r in rows:
        seen += [k for k in r if k not in seen]
    return seen


def _generic_table(rows: Sequence[Dict[str, Any]], preferred: Sequence[str] = ()) -> str:
    cols = _columns(rows, preferred)
    return _table(cols, [[r.get(c) for c in cols] for r in rows])


def _corruption_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Corruption x severity of the first metric every row has, with the mean per corruption."""
    metric = next((m for m in _CORRUPTION_METRICS if all(isinstance(r.get(m), (int, float)) for r in rows)), None)
    cells = {(str(r['corruption']), r.get('severity')) for r in rows}
    if metric is None or any('severity' not in r for r in rows) or len(cells) != len(rows):
        return _generic_table(rows, ('corruption', 'severity') + _CORRUPTION_METRICS)
    names = list(dict.fromkeys(str(r['corruption']) for r in rows))
    severities = sorted({r['severity'] for r in rows}, key=lambda s: (not isinstance(s, (int, float)), str(s)))
    values = {(str(r['corruption']), r['severity']): r[metric] for r in rows}
    body = []
    for name in names:
        found = [values[(name, s)] for s in severities if (name, s) in values]
        body.append([name] + [values.get((name, s)) for s in severities] + [sum(found) / len(found)])
    return f'`{metric}` per severity:\n\n' + _table(['corruption'] + [f'severity {s}' for s in severities] + ['mean'],
                                                     body)


def _public_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """A result row for a public card: no CSV ``section`` column, local paths shortened to their file name."""
    shown = {}
    for k, v in row.items():
        if k == 'section':
            continue
        if isinstance(v, str) and (k in _LOCAL_PATH_KEYS or k in ('checkpoint', 'corruption_dir')) and v:
            v = os.path.basename(v.rstrip('/')) or v
        elif isinstance(v, str) and v.startswith('local-dir:'):
            v = 'local-dir:' + os.path.basename(v[len('local-dir:'):].rstrip('/'))
        shown[k] = v
    return shown


def _results_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """Tables of clean, corruption, summary, adversarial and any other result rows."""
    groups: Dict[str, List[Dict[str, Any]]] = {'clean': [], 'corruption': [], 'summary': [], 'attack': [], 'other': []}
    for row in map(_public_row, rows):
        if not row:
            continue
        if 'attack' in row:
            groups['attack'].append(row)
        elif 'corruption' in row:
            groups['corruption'].append(row)
        elif any(k in _SUMMARY_KEYS or k.endswith('_mce') for k in row):
            groups['summary'].append(row)
        elif any(k in row for k in ('top1', 'top1_err', 'top5', 'top5_err')):
            groups['clean'].append(row)
        else:
            groups['other'].append(row)
    parts = []
    if groups['clean']:
        splits = sorted({str(row['split']) for row in groups['clean'] if row.get('split')})
        on = f" on the {', '.join(f'`{s}`' for s in splits)} split{'s' if len(splits) > 1 else ''}" if splits else ''
        parts.append(f'### Clean accuracy{on}\n\n' + _generic_table(groups['clean'], _CLEAN_KEYS))
    if groups['summary']:
        summary = [(k, v) for row in groups['summary'] for k, v in row.items()]
        summary.sort(key=lambda kv: (kv[0] not in _SUMMARY_KEYS, _SUMMARY_KEYS.index(kv[0])
                                     if kv[0] in _SUMMARY_KEYS else 0))
        parts.append('### Corruption summary\n\n' + _table(['metric', 'value'], summary))
    if groups['corruption']:
        parts.append('### Corruptions\n\n' + _corruption_table(groups['corruption']))
    if groups['attack']:
        parts.append('### Adversarial attacks\n\n' + _generic_table(groups['attack'], _ATTACK_KEYS))
    if groups['other']:
        parts.append('### Other results\n\n' + _generic_table(groups['other']))
    return '\n'.join(parts)


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def _public_args(args: Dict[str, Any]) -> Dict[str, Any]:
    """Training arguments for a public card: unset ones dropped, local paths replaced by a marker."""
    shown = {}
    for k, v in args.items():
        if v is None or v == '' or v == [] or v == {}:
            continue
        if isinstance(v, str) and k in _NAMED_FILE_KEYS:
            v = os.path.basename(v)
        shown[k] = '<local path>' if k in _LOCAL_PATH_KEYS and isinstance(v, str) else _plain(v)
    return shown


def _public_command(command: str) -> str:
    """The training command for a public card: absolute paths shortened to ``<local path>/<file name>``."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: show it as given
        return command
    return shlex.join(f'<local path>/{os.path.basename(w.rstrip("/"))}' if os.path.isabs(w) else w for w in words)


def dataset_ids(args: Dict[str, Any]) -> List[str]:
    """Hub dataset ids for the card's metadata, from timm's ``--dataset`` ('hfds/<id>', 'torch/cifar10', ...)."""
    name = str(args.get('dataset') or '').strip()
    if name in _TIMM_DATASETS:
        return [_TIMM_DATASETS[name]]
    kind, _, rest = name.partition('/')
    if kind in ('hfds', 'hfids', 'tfds', 'wds') and rest:
        return [rest]
    return []


def model_card(
        config: Dict[str, Any],
        repo_id: str,
        results: Sequence[Dict[str, Any]] = (),
        train_command: Optional[str] = None,
        train_args: Optional[Dict[str, Any]] = None,
        license: str = DEFAULT_LICENSE,
        datasets: Sequence[str] = (),
        param_count: Optional[float] = None,
        epoch: Optional[int] = None,
        metric: Optional[float] = None,
        weights: str = 'state_dict',
) -> str:
    """The ``README.md`` of an export: timm's card (``timm.models._hub.generate_readme``: metadata block,
    description, model details, usage, citation) with the TENET settings, training and results before the usage.

    Args:
        config: The export's ``config.json`` (architecture, num_classes, pretrained_cfg, tenet).
        repo_id: Hub repository the card is for (``namespace/name``).
        results: Result rows (see :func:`timm_tenet.robustness.results.read_results`), shown in tables.
        train_command: The command line that trained the model.
        train_args: Training arguments, shown as YAML (unset values dropped, local paths hidden).
        license: License of the weights (metadata ``license``).
        datasets: Hub dataset ids (metadata ``datasets``).
        param_count: Parameters in millions.
        epoch: Epoch of the exported checkpoint.
        metric: Evaluation metric the checkpoint was selected by.
        weights: ``'state_dict_ema'`` for EMA weights.
    """
    card = dict(
        tags=list(CARD_TAGS), license=license,
        description=_description(config),
        details=_details(config, datasets, param_count, epoch, metric, weights),
        usage=_usage(config, repo_id),
        citation=_RSC_CITATION if _method(config)[0] == 'RSC' else _CITATION,
    )
    head, usage = generate_readme(card, repo_id.split('/')[-1]).split('\n## Model Usage\n', 1)
    tenet_sections = [_method_settings(config.get('tenet') or {}), _training(train_command, train_args)]
    if results:
        tenet_sections.append('## Evaluation\n\n' + _results_markdown(results))
    return '\n'.join([head] + [s for s in tenet_sections if s] + ['## Model Usage' + '\n' + usage])


def _trained_as(config: Dict[str, Any]) -> str:
    return (config.get('tenet') or {}).get('model') or config['architecture']


def training_method(tenet: Dict[str, Any]) -> Tuple[str, Dict[str, str]]:
    """The training method named by an export's ``tenet`` field (``'TENET'``, or ``'RSC'`` where it holds
    ``method: 'rsc'``) and that method's paper."""
    return ('RSC', RSC_PAPER) if tenet.get('method') == 'rsc' else ('TENET', TENET_PAPER)


def _method(config: Dict[str, Any]) -> Tuple[str, Dict[str, str]]:
    return training_method(config.get('tenet') or {})


def _needs_timm_tenet(config: Dict[str, Any]) -> bool:
    return (config.get('tenet') or {}).get('requires') == 'timm_tenet'


def _description(config: Dict[str, Any]) -> str:
    arch = config['architecture']
    method = _method(config)[0]
    what = 'RSC (Representation Self-Challenging, ECCV 2020) by `timm_tenet`' if method == 'RSC' \
        else 'TENET (group-wise inhibition feature regularization, ICCV 2021)'
    text = (f'A `{arch}` image classification model trained with {what} as `{_trained_as(config)}`. '
            f'{method} changes training only: the weights are plain `{arch}` weights, with the same inference cost.')
    if _needs_timm_tenet(config):
        text += (f'\n\n`{arch}` is registered by `timm_tenet` (this project), not by timm: '
                 f'install `timm_tenet` and `import timm_tenet` before loading these weights.')
    return text


def _details(config: Dict[str, Any], datasets: Sequence[str], param_count: Optional[float], epoch: Optional[int],
             metric: Optional[float], weights: str) -> Dict[str, Any]:
    """timm's ``Model Details`` entries: type, architecture, stats, preprocessing, checkpoint, data, papers."""
    arch, trained_as = config['architecture'], _trained_as(config)
    pcfg = config.get('pretrained_cfg') or {}
    stats = {}
    if param_count is not None:
        stats['Params (M)'] = f'{param_count:.2f}'
    names = config.get('label_names')
    shown = f" ({', '.join(map(str, names[:20]))}{', ...' if len(names) > 20 else ''})" \
        if isinstance(names, list) and names else ''
    stats['Classes'] = f"{config.get('num_classes')}{shown}"
    if pcfg.get('input_size'):
        stats['Image size'] = ' x '.join(map(str, pcfg['input_size'][1:]))
    details = {
        'Model Type': 'Image classification / feature backbone',
        'Architecture': f'`{arch}`' + (f' (trained as `{trained_as}`)' if trained_as != arch else ''),
        'Model Stats': stats,
    }
    preprocessing = {k: pcfg[k] for k in ('crop_pct', 'crop_mode', 'interpolation', 'mean', 'std') if k in pcfg}
    if preprocessing:
        details['Preprocessing'] = ', '.join(f'{k} {_fmt(v)}' for k, v in preprocessing.items())
    if epoch is not None or metric is not None:
        details['Checkpoint'] = ('EMA weights' if weights == 'state_dict_ema' else 'Weights') \
            + (f' of epoch {epoch}' if epoch is not None else '') \
            + (f' (evaluation metric {_fmt(metric)})' if metric is not None else '')
    if datasets:
        details['Dataset'] = list(datasets)  # timm lists them in the metadata block too
    method, paper = _method(config)
    details['Papers'] = {paper['paper_name']: 'https://arxiv.org/abs/' + paper['paper_ids'].split(':')[-1]}
    details['Original'] = f"{paper['origin_url']} ({method} reference code), " \
                          f"https://github.com/huggingface/pytorch-image-models"
    details['Trained and exported with'] = '`timm_tenet` (this project), a TENET plugin for timm'
    return details


def _method_settings(tenet: Dict[str, Any]) -> str:
    """The settings table of the training method: RSC's for an RSC export, else TENET's."""
    if tenet.get('method') == 'rsc':
        return '## RSC settings\n\n' + _table(['setting', 'value'], list((tenet.get('rsc_config') or {}).items()))
    if not tenet.get('config'):
        return '## TENET settings\n\nThe checkpoint records no TENET settings.\n'
    rows = list(tenet['config'].items())
    if tenet.get('step') is not None:
        rows.append(('training steps counted', tenet['step']))
    return '## TENET settings\n\n' + _table(['setting', 'value'], rows)


def _training(train_command: Optional[str], train_args: Optional[Dict[str, Any]]) -> str:
    """The training command and arguments, local paths hidden; empty when neither is known."""
    if not (train_command or train_args):
        return ''
    lines = ['## Training', '']
    if train_command:
        lines += ['```bash', _public_command(train_command), '```', '']
    if train_args:
        lines += ['<details>', '<summary>Training arguments</summary>', '', '```yaml',
                  yaml.safe_dump(_public_args(train_args), sort_keys=True).rstrip(), '```', '', '</details>', '']
    return '\n'.join(lines)


def _usage(config: Dict[str, Any], repo_id: str) -> str:
    arch = config['architecture']
    imports = ['import timm']
    if _needs_timm_tenet(config):
        imports.append(f'import timm_tenet  # registers {arch}, which stock timm does not have')
    else:
        imports[0] += '  # stock timm is enough, timm_tenet is not needed'
    return '\n'.join([
        '', '### Image Classification', '```python', 'from urllib.request import urlopen', 'from PIL import Image',
        *imports, '',
        "img = Image.open(urlopen('https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/"
        "beignets-task-guide.png'))",
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
        'data_config = timm.data.resolve_model_data_config(model)',
        'transforms = timm.data.create_transform(**data_config, is_training=False)',
        'output = model(transforms(img).unsqueeze(0))  # unsqueeze single image into batch of 1',
        'top5_probabilities, top5_class_indices = output.softmax(dim=1).topk(5)', '```', '',
        _fine_tuning(config, repo_id),
    ])


def _fine_tuning(config: Dict[str, Any], repo_id: str) -> str:
    if _method(config)[0] == 'RSC':
        return ("To train with RSC again, give `timm_tenet`'s `train.py` the flag `--rsc` and the settings above "
                "as flags (`spatial_drop` is `--rsc-spatial-drop`, and so on).")
    return (f"To fine-tune with TENET again, `timm_tenet.hub.create_model('hf-hub:{repo_id}', pretrained=True)` "
            f'returns the model with these TENET settings as `model.tenet_cfg`.')
