"""train.py's command line: timm's flag names and dests, -c YAML defaults, TENET and RSC resolution."""
import dataclasses

import pytest
import timm
import yaml

from timm_tenet import RscConfig, TenetConfig  # also registers the _tenet models
from timm_tenet.training.args import build_train_parser, parse_train_args
from timm_tenet.utils.cli import ConfigError, args_to_dict, args_to_yaml, load_config_defaults
from timm_tenet.training.settings import TENET_ARGS, TrainingError, resolve_rsc_config, resolve_tenet_config


def _write(tmp_path, text, name='cfg.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_timm_flag_names_map_to_timm_dests():
    args, _ = parse_train_args([
        '--data-dir', '/d', '--dataset', 'torch/cifar10', '--model', 'resnet18', '-b', '64', '--lr', '0.2',
        '--weight-decay', '1e-4', '--sched', 'step', '--epochs', '7', '--warmup-epochs', '1', '--amp',
        '--amp-dtype', 'bfloat16', '--model-ema', '--grad-accum-steps', '2', '--clip-grad', '1.0', '--mixup', '0.2',
        '--aug-splits', '3', '--jsd-loss', '--input-size', '3', '32', '32', '--mean', '0.5', '0.5', '0.5',
        '--torchcompile', '-j', '2', '--experiment', 'e', '--seed', '3'])
    assert (args.data_dir, args.dataset, args.batch_size, args.lr, args.weight_decay) == \
        ('/d', 'torch/cifar10', 64, 0.2, 1e-4)
    assert (args.sched, args.epochs, args.warmup_epochs, args.amp_dtype, args.grad_accum_steps) == \
        ('step', 7, 1, 'bfloat16', 2)
    assert args.amp and args.model_ema and args.jsd_loss and args.aug_splits == 3 and args.mixup == 0.2
    assert args.input_size == [3, 32, 32] and args.mean == [0.5, 0.5, 0.5]
    assert args.torchcompile == 'inductor' and args.workers == 2 and args.seed == 3


def test_config_file_sets_defaults_and_command_line_overrides(tmp_path):
    path = _write(tmp_path, 'model: test_resnet\nbatch_size: 16\nlr: 1e-3\ntenet_groups: 4\nscale: [0.5, 1.0]\n')
    args, text = parse_train_args(['-c', path, '--batch-size', '8'])
    assert args.model == 'test_resnet' and args.batch_size == 8
    assert args.lr == pytest.approx(1e-3) and isinstance(args.lr, float)  # YAML 1.1 reads 1e-3 as a string
    assert args.tenet_num_groups == 4 and args.scale == [0.5, 1.0]
    assert yaml.safe_load(text)['batch_size'] == 8


def test_unknown_config_key_is_an_error_naming_it(tmp_path):
    path = _write(tmp_path, 'model: resnet18\nbatch-size: 16\n')
    with pytest.raises(ConfigError, match=r"unknown key 'batch-size' .*did you mean 'batch_size'"):
        parse_train_args(['-c', path])
    path = _write(tmp_path, 'tenet_grups: 4\n')
    with pytest.raises(ConfigError, match=r"unknown key 'tenet_grups'.*'tenet_groups'"):
        load_config_defaults(build_train_parser(), path)


def test_config_that_is_not_a_mapping_or_not_yaml_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match='must hold a mapping'):
        parse_train_args(['-c', _write(tmp_path, '- a\n- b\n')])
    with pytest.raises(ConfigError, match='not valid YAML') as info:
        parse_train_args(['-c', _write(tmp_path, 'model: [unclosed\n')])
    assert '\n' not in str(info.value)
    with pytest.raises(ConfigError, match='cannot read config file'):
        parse_train_args(['-c', str(tmp_path / 'missing.yaml')])


def test_written_args_yaml_loads_back_as_a_config(tmp_path):
    args, _ = parse_train_args(['--model', 'test_resnet', '--tenet', '--tenet-period', '2'])
    path = _write(tmp_path, args_to_yaml(args), 'args.yaml')
    again, _ = parse_train_args(['-c', path])
    assert args_to_dict(again) == {**args_to_dict(args), 'config': path}  # the settings, not which came from -c


def test_tenet_defaults_on_for_tenet_models_off_for_plain_ones():
    args, _ = parse_train_args(['--model', 'cifar_resnet18_tenet'])
    model = timm.create_model(args.model, num_classes=10)
    cfg = resolve_tenet_config(args, model)
    assert args.tenet is True and cfg == model.tenet_cfg
    assert (args.tenet_num_groups, args.tenet_stage, args.tenet_warmup_steps, args.tenet_period) == (6, 3, 500, 3)

    args, _ = parse_train_args(['--model', 'cifar_resnet18'])
    assert resolve_tenet_config(args, timm.create_model(args.model)) is None and args.tenet is False

    args, _ = parse_train_args(['--model', 'cifar_resnet18_tenet', '--no-tenet'])
    assert resolve_tenet_config(args, timm.create_model(args.model)) is None


def test_tenet_flags_override_the_model_settings():
    args, _ = parse_train_args(['--model', 'test_resnet', '--tenet', '--tenet-groups', '4', '--tenet-stage', '-1',
                                '--tenet-weight', '0.3', '--tenet-orth-weight', '0', '--tenet-warmup-steps', '7',
                                '--tenet-period', '2', '--tenet-kmeans-iters', '3'])
    cfg = resolve_tenet_config(args, timm.create_model('test_resnet'))
    assert (cfg.num_groups, cfg.stage, cfg.weight, cfg.orth_weight, cfg.warmup_steps, cfg.period,
            cfg.kmeans_iters) == (4, -1, 0.3, 0.0, 7, 2, 3)


def test_tenet_flags_and_keys_are_named_after_the_config_fields(tmp_path):
    """--tenet-<field> / tenet_<field> for every TenetConfig field they set; the former --tenet-groups name
    (flag and config key) still sets num_groups."""
    assert set(TENET_ARGS) == {f'tenet_{field}' for field in TENET_ARGS.values()}
    assert {f.name for f in dataclasses.fields(TenetConfig)} >= set(TENET_ARGS.values())
    for flag in ('--tenet-num-groups', '--tenet-groups'):
        args, _ = parse_train_args(['--model', 'test_resnet', flag, '4'])
        assert args.tenet_num_groups == 4
    args, _ = parse_train_args(['-c', _write(tmp_path, 'tenet_num_groups: 5\n')])
    assert args.tenet_num_groups == 5


def test_invalid_tenet_setting_is_a_training_error():
    args, _ = parse_train_args(['--model', 'test_resnet', '--tenet', '--tenet-period', '0'])
    with pytest.raises(TrainingError, match='period'):
        resolve_tenet_config(args, timm.create_model('test_resnet'))


def test_a_tenet_flag_turns_tenet_on_and_no_tenet_clears_them():
    args, _ = parse_train_args(['--model', 'test_resnet', '--tenet-groups', '4'])
    assert resolve_tenet_config(args, timm.create_model('test_resnet')) == TenetConfig(num_groups=4)
    assert args.tenet is True
    args, _ = parse_train_args(['-c', 'hparams/digits_resnet18_tenet.yaml', '--no-tenet'])  # the recipe's baseline
    assert resolve_tenet_config(args, timm.create_model(args.model)) is None and args.tenet_warmup_steps is None


def test_rsc_flags_set_the_config_and_are_recorded():
    args, _ = parse_train_args(['--model', 'test_resnet', '--rsc', '--rsc-stage', '3', '--rsc-spatial-drop', '0.5',
                                '--rsc-channel-drop', '0.25', '--rsc-spatial-prob', '0.7', '--rsc-batch-percent', '0.1',
                                '--rsc-batch-percent-step', '0.05', '--rsc-batch-percent-every', '4'])
    tenet_cfg = resolve_tenet_config(args, timm.create_model('test_resnet'))
    assert resolve_rsc_config(args, tenet_cfg) == RscConfig(3, 0.5, 0.25, 0.7, 0.1, 0.05, 4)
    args, _ = parse_train_args(['--model', 'test_resnet', '--rsc'])
    assert resolve_rsc_config(args) == RscConfig()
    saved = yaml.safe_load(args_to_yaml(args))
    assert saved['rsc'] is True and saved['rsc_spatial_drop'] == 1 / 3 and saved['rsc_batch_percent_every'] == 10


@pytest.mark.parametrize('flag, value, message', [
    ('--rsc-spatial-drop', '1.5', r'^--rsc-spatial-drop 1\.5: RSC spatial_drop is the fraction of entries zeroed and '
                                  r'must be in \(0, 1\), got 1\.5\.$'),
    ('--rsc-batch-percent', '-0.1', r'^--rsc-batch-percent -0\.1: RSC batch_percent must be in \[0, 1\]'),
    ('--rsc-spatial-prob', '2', r'^--rsc-spatial-prob 2\.0: RSC spatial_prob must be in \[0, 1\]'),
])
def test_out_of_range_rsc_fraction_is_one_line_naming_the_flag(flag, value, message):
    args, _ = parse_train_args(['--model', 'test_resnet', '--rsc', flag, value])
    with pytest.raises(TrainingError, match=message):
        resolve_rsc_config(args)


def test_an_rsc_flag_turns_rsc_on_and_no_rsc_clears_them():
    args, _ = parse_train_args(['--model', 'test_resnet', '--rsc-spatial-prob', '0.2', '--rsc-stage', '3'])
    assert resolve_rsc_config(args) == RscConfig(stage=3, spatial_prob=0.2) and args.rsc is True
    args, _ = parse_train_args(['--model', 'test_resnet'])
    assert resolve_rsc_config(args) is None and args.rsc is False and args.rsc_stage is None
    args, _ = parse_train_args(['-c', 'hparams/digits_resnet18_rsc.yaml', '--no-rsc'])  # the recipe's baseline
    assert resolve_rsc_config(args) is None and args.rsc_batch_percent_every is None


def test_rsc_is_refused_together_with_tenet():
    args, _ = parse_train_args(['--model', 'cifar_resnet18_tenet', '--rsc'])
    tenet_cfg = resolve_tenet_config(args, timm.create_model(args.model))
    with pytest.raises(TrainingError, match='^--rsc and TENET are two methods.*add --no-tenet'):
        resolve_rsc_config(args, tenet_cfg)
    args, _ = parse_train_args(['--model', 'cifar_resnet18_tenet', '--rsc', '--no-tenet'])
    assert resolve_rsc_config(args, resolve_tenet_config(args, timm.create_model(args.model))) == RscConfig()


# --- no flag is parsed and ignored ----------------------------------------------------------------

def test_a_tenet_flag_turns_tenet_on_for_a_plain_model():
    args, _ = parse_train_args(['--model', 'resnet18', '--tenet-weight', '0.5'])
    cfg = resolve_tenet_config(args, timm.create_model('resnet18'))
    assert args.tenet is True and cfg == TenetConfig(weight=0.5)


def test_a_method_flag_typed_with_its_no_flag_is_a_one_line_error():
    args, _ = parse_train_args(['--model', 'resnet18', '--no-tenet', '--tenet-weight', '0.5', '--tenet-period', '2'])
    with pytest.raises(TrainingError, match=r'^--tenet-weight, --tenet-period given with --no-tenet: drop them or '
                                            r'train with TENET$'):
        resolve_tenet_config(args, timm.create_model('resnet18'))
    args, _ = parse_train_args(['-c', 'hparams/digits_resnet18_rsc.yaml', '--no-rsc', '--rsc-stage', '2'])
    with pytest.raises(TrainingError, match=r'^--rsc-stage given with --no-rsc: drop it'):
        resolve_rsc_config(args)


@pytest.mark.parametrize('extra, message', [
    (['--dataset-download'], r"--dataset-download applies to torch/, tfds/, hfids/ datasets only, not to 'folder'"),
    (['--dataset', 'sklearn/digits', '--input-key', 'img'], "--input-key applies to hfds/.*not to 'sklearn/digits'"),
    (['--train-num-samples', '100'], '--train-num-samples applies to hfids/, tfds/, wds/ datasets only'),
    (['--epoch-repeats', '2'], '--epoch-repeats applies to hfids/, tfds/, wds/ datasets only'),
    (['--dataset', 'hfds/x', '--dataset-download'], "--dataset-download .* not to 'hfds/x'"),
    (['--dataset', 'torch/cifar10', '--class-map', 'map.txt'], "--class-map does not apply to torchvision dataset"),
])
def test_dataset_flags_the_dataset_type_would_ignore_are_refused(extra, message, tmp_path):
    from timm_tenet.data.dataset import DataError, create_train_eval_datasets
    args, _ = parse_train_args(['--data-dir', str(tmp_path / 'absent'), *extra])
    with pytest.raises(DataError, match=message) as e:
        create_train_eval_datasets(args)
    assert '\n' not in str(e.value) and not any(tmp_path.iterdir())  # refused before anything was read or written


def test_torchcompile_mode_without_torchcompile_is_refused_before_training(tmp_path):
    from timm_tenet.training.run import run_training
    args, _ = parse_train_args(['--model', 'test_resnet', '--torchcompile-mode', 'max-autotune',
                                '--output', str(tmp_path), '--dataset', 'sklearn/digits'])
    with pytest.raises(TrainingError, match=r'^--torchcompile-mode needs --torchcompile \[BACKEND\]$'):
        run_training(args)
    assert not any(tmp_path.iterdir())


def test_eager_torchcompile_with_grad_checkpointing_is_refused_before_training(tmp_path):
    from timm_tenet.training.run import run_training
    args, _ = parse_train_args(['--model', 'test_resnet', '--torchcompile', 'eager', '--grad-checkpointing',
                                '--output', str(tmp_path), '--dataset', 'sklearn/digits'])
    with pytest.raises(TrainingError, match=r"^--torchcompile eager cannot train test_resnet with --grad-checkpointing "
                                            r"\(PyTorch's eager backends .*\): use --torchcompile aot_eager \(debugging\) "
                                            r"or inductor, or drop --grad-checkpointing$"):
        run_training(args)
    assert not any(tmp_path.iterdir())
