"""Share TENET weights on the Hugging Face Hub: upload an export (``model.safetensors``, ``config.json``,
``README.md``) in one commit, load exports with their TENET settings, and the ``python -m timm_tenet.hub``
command line.

Building the files is :mod:`timm_tenet.hub.export` (with :mod:`timm_tenet.hub.model_card` for the card); their
public names are re-exported by :mod:`timm_tenet.hub`, which stays the one import for sharing weights.

Command line::

    python -m timm_tenet.hub push --checkpoint output/train/exp/model_best.pth.tar \\
        --repo-id org/resnet50_tenet.in1k [--use-ema] [--private] [--results-file results.json] [--dry-run DIR]
"""
import argparse
import json
import logging
import shlex
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch.nn as nn

import timm
from timm.models import parse_model_name
from timm.utils import ParseKwargs

from .. import __version__
from ..utils.errors import first_line
from ..utils.checkpoint import CheckpointError, resolve_checkpoint_path
from ..config import TenetConfig
from ..utils.network import HUB_TIMEOUT, hub_unreachable
from .export import CONFIG_NAME, EXPORT_FILES, ExportError, check_repo_id, export_to_folder, \
    known_tenet_fields
from .model_card import DEFAULT_LICENSE


_logger = logging.getLogger(__name__)


class HubError(RuntimeError):
    """The Hub cannot be reached, refuses the credentials, or refuses the upload or download."""


# ---------------------------------------------------------------------------------------------------------------
# Hub


def _exception_chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _is_network_error(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    kind = type(e)
    return kind.__module__.split('.')[0] in ('httpx', 'httpx2', 'httpcore', 'requests', 'urllib3') and any(
        word in kind.__name__ for word in ('Connect', 'Timeout', 'Network', 'Proxy'))


def _explain(e: BaseException, action: str, target: str, endpoint: str, upload: bool) -> Optional[str]:
    """One line for a Hub failure (offline, unreachable, credentials, refused), or None for anything else."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, \
        OfflineModeIsEnabled, RepositoryNotFoundError
    chain = list(_exception_chain(e))
    offline = any(isinstance(x, OfflineModeIsEnabled) for x in chain) or (
        isinstance(e, LocalEntryNotFoundError) and constants.is_offline_mode())
    if offline:
        if upload:
            return f'cannot {action}: HF_HUB_OFFLINE=1 is set and uploads need the network (unset it, or use ' \
                   f'--dry-run DIR to write the files only); nothing was uploaded'
        return f'cannot {action}: HF_HUB_OFFLINE=1 is set and {target} is not in the local Hugging Face cache ' \
               f'(download it once with network, or use local-dir:/path)'
    if any(_is_network_error(x) for x in chain) or isinstance(e, LocalEntryNotFoundError):
        hint = 'nothing was uploaded (--dry-run DIR writes the files only)' if upload else \
            'with HF_HUB_OFFLINE=1 a model already in the cache loads, as does local-dir:/path'
        return f'cannot {action}: the Hugging Face Hub at {endpoint} cannot be reached (no network?); {hint}'
    http = next((x for x in chain if isinstance(x, HfHubHTTPError) and getattr(x, 'response', None) is not None),
                None)
    if http is None:
        return None
    code = http.response.status_code
    server = first_line(getattr(http, 'server_message', None) or http)
    if code == 401 and (upload or not isinstance(http, (RepositoryNotFoundError, GatedRepoError))):
        return f'cannot {action}: the Hub rejected the token (401 Unauthorized): it is invalid or expired; ' \
               f'run `hf auth login` or set HF_TOKEN to a valid token'
    if code == 403:
        need = f'a token with write access to {target}' if upload else f'access to {target}'
        return f'cannot {action}: the token is not allowed to (403 Forbidden: {server}); it needs {need}'
    if isinstance(http, (RepositoryNotFoundError, GatedRepoError)) or code == 404:
        return f'cannot {action}: {target} was not found on the Hub, or the token cannot see it ({code})'
    return f'cannot {action}: the Hub answered {code} ({server})'


@contextmanager
def _hub_errors(action: str, target: str, endpoint: str, upload: bool) -> Iterator[None]:
    try:
        yield
    except (ExportError, HubError):
        raise
    except Exception as e:
        message = _explain(e, action, target, endpoint, upload)
        if message is None:
            raise
        raise HubError(message) from e


def _create_repo(api: Any, repo_id: str, private: bool) -> bool:
    """Create ``repo_id``; True if it is new, False if it existed."""
    from huggingface_hub.errors import HfHubHTTPError
    try:
        api.create_repo(repo_id, private=private, exist_ok=False)
        return True
    except HfHubHTTPError as e:
        if getattr(e, 'response', None) is not None and e.response.status_code == 409:
            return False
        raise


def _push_token(repo_id: str, token: Optional[str]) -> str:
    from huggingface_hub import constants, get_token
    if constants.is_offline_mode():
        raise HubError(f'cannot push to {repo_id}: HF_HUB_OFFLINE=1 is set and uploads need the network (unset it, '
                       f'or use --dry-run DIR to write the files only); nothing was uploaded')
    token = token or get_token()
    if not token:
        raise HubError(f'cannot push to {repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN to a '
                       f'token with write access (--dry-run DIR needs none)')
    return token


def check_push_ready(
        repo_id: str,
        token: Optional[str] = None,
        endpoint: Optional[str] = None,
        timeout: float = HUB_TIMEOUT,
) -> str:
    """Fail fast if a later :func:`push` to ``repo_id`` cannot work: a malformed id, ``HF_HUB_OFFLINE=1`` or no
    token (without network), then a Hub that does not answer within ``timeout`` seconds or refuses the token.
    ``train.py --push-to-hub`` calls it before training. Returns ``repo_id``.

    Raises:
        ExportError: Malformed repo id.
        HubError: Offline mode, no token, unreachable Hub, or a rejected token.
    """
    from huggingface_hub import HfApi
    repo_id = check_repo_id(repo_id)
    token = _push_token(repo_id, token)
    api = HfApi(endpoint=endpoint, token=token, library_name='timm_tenet', library_version=__version__)
    action = f'push to {repo_id}'
    unreachable = hub_unreachable(api.endpoint, timeout)
    if unreachable:
        raise HubError(f'cannot {action}: the Hugging Face Hub at {api.endpoint} cannot be reached within {timeout:g} s '
                       f'({unreachable}; no network?)')
    with _hub_errors(action, repo_id, api.endpoint, upload=True):
        api.whoami()
    return repo_id


def _commit_to_repo(api: Any, repo_id: str, private: bool, operations: List[Any], **commit_kwargs: Any) -> Any:
    """Create the repository if needed and commit ``operations`` to it; a repository created here is deleted
    again when the commit fails, so a failed push leaves nothing behind."""
    created = _create_repo(api, repo_id, private)
    try:
        return api.create_commit(repo_id=repo_id, operations=operations, **commit_kwargs)
    except BaseException:
        if created:
            try:
                api.delete_repo(repo_id)
            except Exception as e:
                _logger.warning(f'could not delete the new, empty repository {repo_id}: {first_line(e)}')
        raise


def push(
        checkpoint: Union[str, Path],
        repo_id: str,
        use_ema: bool = False,
        private: bool = False,
        dry_run: Optional[Union[str, Path]] = None,
        overwrite: bool = False,
        model_name: Optional[str] = None,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        results_files: Sequence[Union[str, Path]] = (),
        train_command: Optional[str] = None,
        license: str = DEFAULT_LICENSE,
        datasets: Optional[Sequence[str]] = None,
        revision: Optional[str] = None,
        create_pr: bool = False,
        commit_message: Optional[str] = None,
        token: Optional[str] = None,
        endpoint: Optional[str] = None,
        verify: bool = True,
) -> str:
    """Export ``checkpoint`` and upload the files to ``repo_id`` in one commit (or, with ``dry_run``, only write them).

    The files are built and checked in a temporary folder first (:func:`export_to_folder`), so bad input fails
    before the token or the network are touched; the repository is created only then, and deleted again if it
    was new and the commit fails, so a failed push leaves nothing behind.

    Args:
        checkpoint: A timm-style training checkpoint, a bare state dict, or a ``.safetensors`` file.
        repo_id: ``namespace/name`` of the Hub model repository.
        use_ema: Export ``state_dict_ema`` instead of ``state_dict``.
        private: Create the repository as private (an existing one keeps its visibility).
        dry_run: Write the files into this folder instead of uploading them; no network, no token.
        overwrite: With ``dry_run``, replace a folder that holds a previous export.
        model_name, num_classes, model_kwargs, results_files, train_command, license, datasets, verify:
            As for :func:`export_to_folder`.
        revision: Branch to commit to (default ``main``).
        create_pr: Open a pull request instead of committing to the branch.
        commit_message: Commit message (default ``Add <architecture> weights trained with TENET``).
        token: Hub token (default ``HF_TOKEN`` or the one saved by ``hf auth login``).
        endpoint: Hub URL (default ``HF_ENDPOINT`` or https://huggingface.co).

    Returns:
        The commit (or pull request) URL, or with ``dry_run`` the folder written.

    Raises:
        ExportError: Bad checkpoint, class count, repo id or folder.
        HubError: Offline, unreachable Hub, missing or refused token, refused upload (one line each).
    """
    repo_id = check_repo_id(repo_id)
    options = dict(use_ema=use_ema, model_name=model_name, num_classes=num_classes, model_kwargs=model_kwargs,
                   results_files=results_files, train_command=train_command, license=license, datasets=datasets,
                   verify=verify)
    if dry_run is not None:
        return str(export_to_folder(checkpoint, dry_run, repo_id, overwrite=overwrite, **options))

    from huggingface_hub import CommitOperationAdd, HfApi
    with tempfile.TemporaryDirectory(prefix='timm_tenet_push_') as tmp:
        folder = export_to_folder(checkpoint, Path(tmp) / 'export', repo_id, **options)  # bad input fails here
        architecture = json.loads((folder / CONFIG_NAME).read_text(encoding='utf-8'))['architecture']
        action = f'push to {repo_id}'
        token = _push_token(repo_id, token)
        api = HfApi(endpoint=endpoint, token=token, library_name='timm_tenet', library_version=__version__)
        with _hub_errors(action, repo_id, api.endpoint, upload=True):
            api.whoami()
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
                      for name in EXPORT_FILES]
        with _hub_errors(action, repo_id, api.endpoint, upload=True):
            info = _commit_to_repo(api, repo_id, private, operations, revision=revision, create_pr=create_pr,
                                   commit_message=commit_message or f'Add {architecture} weights trained with TENET')
    url = info.pr_url or info.commit_url
    _logger.info(f'Pushed {", ".join(EXPORT_FILES)} to {repo_id}: {url}')
    return url


def push_after_training(
        repo_id: str,
        checkpoint: Union[str, Path],
        use_ema: bool = False,
        private: bool = False,
        results_files: Sequence[Union[str, Path]] = (),
        train_command: Optional[str] = None,
) -> str:
    """What ``train.py --push-to-hub NAMESPACE/NAME`` runs once training is done.

    Call :func:`check_push_ready` when parsing the arguments, so that a malformed id, offline mode or a
    missing token fail before training rather than after it.

    Args:
        repo_id: ``namespace/name`` of the Hub model repository.
        checkpoint: The checkpoint to push, or the run's output folder (``model_best.pth.tar``, else
            ``last.pth.tar``, else the newest ``*.pth.tar``).
        use_ema: Push the EMA weights.
        private: Create the repository as private.
        results_files: ``validate.py`` results (JSON or CSV) for the card.
        train_command: The training command line; default ``python`` + ``sys.argv``.
    """
    path = checkpoint
    if Path(path).is_dir():
        try:
            path = resolve_checkpoint_path(path)
        except CheckpointError as e:
            raise ExportError(str(e)) from None
    if train_command is None:
        train_command = 'python ' + shlex.join(sys.argv)
    return push(path, repo_id, use_ema=use_ema, private=private, results_files=results_files,
                train_command=train_command)


def _exported_config(model_name: str, cache_dir: Optional[Union[str, Path]]) -> Dict[str, Any]:
    """The ``config.json`` behind an ``hf-hub:`` (from the cache) or ``local-dir:`` name, else {}."""
    source, model_id = parse_model_name(model_name)
    path = None
    if source == 'local-dir':
        path = Path(model_id) / CONFIG_NAME
    elif source == 'hf-hub':
        from huggingface_hub import try_to_load_from_cache
        repo, _, rev = model_id.partition('@')
        cached = try_to_load_from_cache(repo, CONFIG_NAME, cache_dir=cache_dir, revision=rev or None)
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text(encoding='utf-8'))


def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with one-line errors for Hub failures, and the TENET settings of exports.

    A model loaded from an export (``hf-hub:`` / ``local-dir:``) is its base architecture; this sets its
    ``tenet_cfg`` from the export's ``config.json``, so that TENET fine-tuning continues with them.

    Examples:

        ```python
        model = create_model('local-dir:export/', pretrained=True)
        model.tenet_cfg  # TenetConfig(num_groups=6, stage=3, ...)
        ```

    Raises:
        HubError: Offline without the files in the cache, unreachable Hub, refused token, unknown repository.
    """
    from huggingface_hub import constants
    with _hub_errors(f'load {model_name}', model_name.partition(':')[2] or model_name, constants.ENDPOINT,
                     upload=False):
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    tenet = (_exported_config(model_name, kwargs.get('cache_dir')).get('tenet') or {}).get('config')
    if tenet:
        model.tenet_cfg = TenetConfig(**known_tenet_fields(tenet))
    return model


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m timm_tenet.hub', description='Share TENET weights on the Hugging Face Hub.')
    commands = parser.add_subparsers(dest='command', required=True)
    p = commands.add_parser(
        'push', help='export a checkpoint and upload it (or write the files with --dry-run DIR)',
        description='Export a checkpoint as model.safetensors, config.json and README.md and upload them in one '
                    'commit. The token comes from HF_TOKEN or `hf auth login`.')
    p.add_argument('--checkpoint', required=True, metavar='PATH',
                   help='timm-style checkpoint (model_best.pth.tar, ...), bare state dict, or .safetensors file')
    p.add_argument('--repo-id', required=True, metavar='NAMESPACE/NAME', help='Hub model repository')
    p.add_argument('--use-ema', action='store_true', help='export the EMA weights (state_dict_ema)')
    p.add_argument('--private', action='store_true', help='create the repository as private')
    p.add_argument('--dry-run', metavar='DIR', default=None,
                   help='write exactly what would be uploaded into DIR and upload nothing')
    p.add_argument('--overwrite', action='store_true', help='with --dry-run: replace a previous export in DIR')
    p.add_argument('--model', default=None, metavar='MODEL',
                   help="architecture, when the checkpoint's 'arch' is missing or wrong (e.g. a bare state dict)")
    p.add_argument('--num-classes', type=int, default=None, metavar='N',
                   help='expected number of classes (default: read from the classifier weights)')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help="architecture arguments (key=value), on top of the checkpoint's args.model_kwargs")
    p.add_argument('--results-file', action='append', default=[], metavar='PATH',
                   help='validate.py results (JSON or CSV) for the card; repeat for several files')
    p.add_argument('--train-command', default=None, metavar='TEXT', help='training command line for the card')
    p.add_argument('--license', default=DEFAULT_LICENSE, help=f'license of the weights (default: {DEFAULT_LICENSE})')
    p.add_argument('--dataset', action='append', default=None, metavar='ID',
                   help="Hub dataset id for the card metadata; repeatable (default: from the checkpoint's args)")
    p.add_argument('--revision', default=None, help='branch to commit to (default: main)')
    p.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    p.add_argument('--commit-message', default=None)
    p.add_argument('--endpoint', default=None, help='Hub URL (default: HF_ENDPOINT or https://huggingface.co)')
    p.add_argument('--no-verify', action='store_true',
                   help='skip reloading the files and comparing logits with the checkpoint model')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        where = push(
            args.checkpoint, args.repo_id, use_ema=args.use_ema, private=args.private, dry_run=args.dry_run,
            overwrite=args.overwrite, model_name=args.model, num_classes=args.num_classes,
            model_kwargs=args.model_kwargs, results_files=args.results_file, train_command=args.train_command,
            license=args.license, datasets=args.dataset, revision=args.revision, create_pr=args.create_pr,
            commit_message=args.commit_message, endpoint=args.endpoint, verify=not args.no_verify,
        )
    except (ExportError, HubError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(where)
    return 0


if __name__ == '__main__':
    sys.exit(main())
