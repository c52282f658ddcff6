"""TrainConfig: values parsed by each field's declared type, nonsense refused up front naming the
setting, default output folders per task."""

import pytest

from blipx.train.config import TASKS, ConfigError, TrainConfig, load_config


@pytest.mark.parametrize("text", ["False", "false", "no", "NO", "off", "Off", "0"])
def test_false_booleans_are_false(text):
    # Before: a value that is not JSON became a string, and a non-empty string is true.
    cfg = load_config(None, [f"resume={text}", f"randaugment={text}", f"overwrite={text}"])
    assert cfg.resume is False and cfg.randaugment is False and cfg.overwrite is False


@pytest.mark.parametrize("text", ["True", "true", "yes", "YES", "on", "1"])
def test_true_booleans_are_true(text):
    cfg = load_config(None, [f"resume={text}", f"grad_checkpointing={text}"])
    assert cfg.resume is True and cfg.grad_checkpointing is True


@pytest.mark.parametrize("override,message", [
    ("resume=maybe", "resume='maybe': expected a boolean, one of true/yes/on/1/false/no/off/0 (any case)"),
    ("resume=2", "resume='2': expected a boolean"),
    ("max_steps=abc", "max_steps='abc': expected an integer"),
    ("max_steps=2.5", "max_steps='2.5': expected an integer"),
    ("lr=fast", "lr='fast': expected a number"),
    ("data_options=3", "data_options=3: expected a JSON object, got int"),
    ("data_options={bad", "data_options='{bad': expected a JSON object (JSON)"),
    ("crop_scale=[0.5, x]", "crop_scale='[0.5, x]': expected a JSON list (JSON)"),
    ("bogus=1", "unknown config keys ['bogus']"),
])
def test_values_that_do_not_parse_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_values_parse_by_type():
    cfg = load_config(None, ["max_steps=7", "lr=3e-4", "crop_scale=[0.5, 1]", "init=null", "image_root=None",
                             'data_options={"noise": 0.3}', "prompt=a photo of ", "model=blip_mini"])
    assert (cfg.max_steps, cfg.lr, cfg.crop_scale, cfg.init, cfg.image_root) == (7, 3e-4, [0.5, 1.0], None, None)
    assert cfg.data_options == {"noise": 0.3} and cfg.prompt == "a photo of " and cfg.model == "blip_mini"


def test_file_values_are_checked_the_same_way(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"resume": "no", "max_steps": "12", "lr": 1}')
    cfg = load_config(path)
    assert (cfg.resume, cfg.max_steps, cfg.lr) == (False, 12, 1.0)
    path.write_text('{"batch_size": true}')  # a boolean is never a number
    with pytest.raises(ConfigError, match="batch_size=True: expected an integer"):
        load_config(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


@pytest.mark.parametrize("override,message", [
    ("batch_size=0", "batch_size=0: must be an integer >= 1"),
    ("grad_accum=0", "grad_accum=0: must be an integer >= 1"),
    ("log_every=0", "log_every=0: must be an integer >= 1"),
    ("epochs=0", "epochs=0: must be an integer >= 1"),
    ("keep_checkpoints=0", "keep_checkpoints=0: must be an integer >= 1"),
    ("max_steps=-1", "max_steps=-1: must be an integer >= 0"),
    ("num_workers=-2", "num_workers=-2: must be an integer >= 0"),
    ("amp=fp8", "amp='fp8': must be one of none, bf16, fp16"),
    ("schedule=linear", "schedule='linear': must be one of cosine, step"),
    ("task=blip_nope", "task='blip_nope': must be one of blip_pretrain"),
    ("lr=nan", "lr=nan: must be a finite number > 0"),
    ("lr=0", "lr=0.0: must be a finite number > 0"),
    ("min_lr=-1e-6", "min_lr=-1e-06: must be a finite number >= 0"),
    ("grad_clip=inf", "grad_clip=inf: must be a finite number >= 0"),
    ("momentum=1.5", "momentum=1.5: must be in [0, 1]"),
    ("alpha=nan", "alpha=nan: must be in [0, 1]"),
    ("label_smoothing=1", "label_smoothing=1.0: must be in [0, 1)"),
    ("crop_scale=[0.8, 0.5]", "crop_scale=[0.8, 0.5]: must be [low, high] with 0 < low <= high <= 1"),
    ("device=gpu", "device='gpu': must be auto, cpu, cuda or cuda:<index>"),
])
def test_settings_that_make_no_sense_are_refused(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_resume_and_overwrite_together_are_refused():
    with pytest.raises(ConfigError, match="contradict"):
        TrainConfig(resume=True, overwrite=True)


def test_default_output_folder_is_per_task():
    folders = {t: TrainConfig(task=t).out_dir for t in TASKS}
    assert folders["blip_pretrain"] == "runs/blip_pretrain" and folders["blip_retrieval"] == "runs/blip_retrieval"
    assert len(set(folders.values())) == len(TASKS)
    assert TrainConfig(task="blip_caption", out_dir="elsewhere").out_dir == "elsewhere"


def test_a_json_quoted_string_is_its_content():
    from blipx.train.config import load_config

    cfg = load_config(None, ['flip="swap"', 'prompt="a picture of "', "model=blip_mini"])
    assert (cfg.flip, cfg.prompt, cfg.model) == ("swap", "a picture of ", "blip_mini")
