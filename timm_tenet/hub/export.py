"""Export a TENET training checkpoint as timm's Hugging Face Hub files, without uploading them.

An export holds ``model.safetensors`` (no pickle), timm's ``config.json`` and a ``README.md`` model card
(:mod:`timm_tenet.hub.model_card`). ``config.json`` names the BASE architecture (``resnet50_tenet`` ->
``resnet50``), so stock timm loads the files and gives the same logits; the TENET model name and settings are
in the card and in the extra ``tenet`` field of ``config.json``. The CIFAR bases (``cifar_resnet18``,
``cifar_resnext29_4x32d``) are registered by ``timm_tenet`` itself: their exports load only after
``import timm_tenet``. :mod:`timm_tenet.hub` uploads the files.

A checkpoint trained with ``--rsc`` (RSC, TENET's nearest relative) is exported as what it is: its ``tenet``
field holds ``method: 'rsc'`` and the RSC settings in place of TENET's (``config`` is null, even for a
``*_tenet`` model name), and its card and ``pretrained_cfg`` name the RSC paper.
"""
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

import timm
from timm.models import save_for_hf

from .. import __version__
from ..robustness.results import ResultsError, read_results
from ..utils.errors import first_line
from .model_card import DEFAULT_LICENSE, dataset_ids, model_card, training_method
from .rebuild import CheckpointState, ExportError, RebuiltModel, known_tenet_fields, load_checkpoint_state, \
    rebuild_model

__all__ = [
    'CONFIG_NAME', 'CheckpointState', 'EXPORT_FILES', 'ExportError', 'check_repo_id', 'export_to_folder',
    'known_tenet_fields', 'load_checkpoint_state',
]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)



def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid ``namespace/name`` Hub model id.

    Raises:
        ExportError: One line saying what is wrong with it.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if not isinstance(repo_id, str) or repo_id.count('/') != 1:
        raise ExportError(f"malformed repo id '{repo_id}': expected 'namespace/name', e.g. 'org/resnet50_tenet.in1k'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ExportError(f"malformed repo id '{repo_id}': {first_line(e)}") from None
    return repo_id


def _check_target(folder: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder, and with ``overwrite`` one that holds anything but a previous export."""
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"'{folder}' exists and is not a folder")
    if not folder.is_dir():
        return
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return
    if not overwrite:
        raise ExportError(f"'{folder}' is not empty ({len(entries)} entries): pass --overwrite to replace a "
                          f"previous export, or choose a new folder")
    foreign = [e for e in entries if e not in EXPORT_FILES or not (folder / e).is_file()]
    if foreign:
        raise ExportError(f"--overwrite replaces only a previous export, and '{folder}' also holds "
                          f"{', '.join(foreign[:5])}: remove them or choose a new folder")


def _tag(repo_id: str) -> str:
    name = repo_id.split('/')[-1]
    return name.rsplit('.', 1)[1] if '.' in name else 'tenet'


def _write_files(export: RebuiltModel, card: Dict[str, Any], folder: Path, repo_id: str, verify: bool) -> None:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into the existing folder ``folder``, and with
    ``verify`` load them as timm does and require the checkpoint model's logits exactly."""
    tenet = {
        'model': export.tenet_model,
        'architecture': export.architecture,
        'config': export.tenet_cfg,
        'step': export.state.tenet_step,
        'timm_tenet_version': __version__,
    }
    if export.rsc_cfg is not None:
        tenet.update(method='rsc', rsc_config=export.rsc_cfg)
    method, paper = training_method(tenet)
    tenet['paper'] = paper['paper_ids']
    if export.needs_timm_tenet:
        tenet['requires'] = 'timm_tenet'
    notes = f"Trained with {method} as {export.tenet_model or export.architecture}; exported by timm_tenet {__version__}."
    model_config = dict(
        pretrained_cfg=dict(architecture=export.architecture, tag=_tag(repo_id), license=card['license'],
                            notes=(notes,), **paper),
        tenet=tenet,
    )
    if export.state.class_names:
        model_config['label_names'] = list(export.state.class_names)  # timm's field: index -> class name
    save_for_hf(export.model, folder, model_config=model_config, safe_serialization=True,
                data_config=export.data_config)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding='utf-8'))
    text = model_card(
        config, repo_id,
        param_count=sum(p.numel() for p in export.model.parameters()) / 1e6,
        train_args=export.state.args, epoch=export.state.epoch, metric=export.state.metric,
        weights=export.state.weights, **card,
    )
    (folder / CARD_NAME).write_text(text, encoding='utf-8')
    for name in EXPORT_FILES:
        os.chmod(folder / name, 0o644)
    if verify:
        _verify(folder, config, export.model)


def _verify(folder: Path, config: Dict[str, Any], model: nn.Module) -> None:
    """Load ``folder`` as timm does (``local-dir:``) and require ``model``'s logits exactly."""
    timm_logger = logging.getLogger('timm')
    level = timm_logger.level
    timm_logger.setLevel(logging.WARNING)  # timm logs the temporary path it loads from
    try:
        loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    finally:
        timm_logger.setLevel(level)
    x = torch.randn(2, *config['pretrained_cfg']['input_size'], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    if not torch.equal(expected, got):
        diff = (expected - got).abs().max().item() if expected.shape == got.shape else 'shape'
        raise ExportError(f"the exported files do not reproduce the checkpoint's logits (difference {diff})")


def _prepare(
        checkpoint: Union[str, Path],
        use_ema: bool,
        model_name: Optional[str],
        num_classes: Optional[int],
        model_kwargs: Optional[Dict[str, Any]],
        results_files: Sequence[Union[str, Path]],
        train_command: Optional[str],
        license: str,
        datasets: Optional[Sequence[str]],
) -> Tuple[RebuiltModel, Dict[str, Any]]:
    """Read the results files and the checkpoint and rebuild its model: every input error comes before any
    file is written. Returns the rebuilt model and the card's arguments."""
    try:
        results = [row for path in results_files for row in read_results(path)]
    except ResultsError as e:
        raise ExportError(str(e)) from None
    export = rebuild_model(load_checkpoint_state(checkpoint, use_ema=use_ema), model_name, num_classes, model_kwargs)
    card = dict(results=results, train_command=train_command, license=license,
                datasets=list(datasets) if datasets is not None else dataset_ids(export.state.args))
    return export, card


def _write_folder(export: RebuiltModel, card: Dict[str, Any], folder: Path, repo_id: str, verify: bool) -> Path:
    """Build the export in a temporary sibling of ``folder``, then move it into place (replacing an export)."""
    folder = folder.absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.tmp-', dir=folder.parent))
    old = None
    try:
        os.chmod(tmp, 0o755)
        _write_files(export, card, tmp, repo_id, verify)
        if folder.exists():
            old = folder.parent / f'.{folder.name}.old-{os.getpid()}'
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        if old is not None and not folder.exists():
            os.replace(old, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def export_to_folder(
        checkpoint: Union[str, Path],
        folder: Union[str, Path],
        repo_id: str,
        use_ema: bool = False,
        overwrite: bool = False,
        model_name: Optional[str] = None,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        results_files: Sequence[Union[str, Path]] = (),
        train_command: Optional[str] = None,
        license: str = DEFAULT_LICENSE,
        datasets: Optional[Sequence[str]] = None,
        verify: bool = True,
) -> Path:
    """Write exactly the files :func:`push` uploads (``model.safetensors``, ``config.json``, ``README.md``).

    The folder appears complete or not at all: the files are written into a temporary sibling, checked,
    and moved into place.

    Args:
        checkpoint: A timm-style training checkpoint, a bare state dict, or a ``.safetensors`` file.
        folder: Output folder; it must be empty or absent (``overwrite`` replaces a previous export).
        repo_id: The ``namespace/name`` the files are meant for (the card's usage names it).
        use_ema: Export ``state_dict_ema`` instead of ``state_dict``.
        overwrite: Replace a folder that holds a previous export.
        model_name: Architecture, when the checkpoint records none (or another one) in ``arch``.
        num_classes: Expected number of classes; it must match the classifier weights.
        model_kwargs: Architecture arguments on top of the checkpoint's ``args['model_kwargs']``.
        results_files: ``validate.py`` results (JSON or CSV) for the card.
        train_command: The command line that trained the model, for the card.
        license: License of the weights.
        datasets: Hub dataset ids for the card metadata; default from the checkpoint's ``args['dataset']``.
        verify: Reload the files with ``local-dir:`` and require the checkpoint's logits exactly.

    Examples:

        ```python
        export_to_folder('output/train/exp/model_best.pth.tar', 'export/', repo_id='org/resnet50_tenet.in1k')
        model = timm.create_model('local-dir:export/', pretrained=True)
        ```
    """
    repo_id = check_repo_id(repo_id)
    folder = Path(folder)
    _check_target(folder, overwrite)
    export, card = _prepare(checkpoint, use_ema, model_name, num_classes, model_kwargs, results_files,
                            train_command, license, datasets)
    return _write_folder(export, card, folder, repo_id, verify)
