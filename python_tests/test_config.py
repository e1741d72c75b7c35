"""The ``kpod distill`` configuration: what a run writes and hashes, pinned byte for byte.

A study reuses a finished run by comparing the configuration in its ``report.json`` with the one it
would run, and every stage is reused by its hash: both must stay exactly as they are for every
preset and method, so they are pinned here as literal values (SHA-256 of the configuration as
``json.dumps(config, indent=2)`` writes it, and the hash of every stage ``distill`` runs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_cli import TINY

from kpod_ops.cli import _config, _parser
from kpod_ops.errors import KPODInputError
from kpod_ops.pipeline.config import (
    METHODS,
    PRESETS,
    DistillConfig,
    config_reference,
    load_config_file,
    merge,
    method_settings,
    preset_config,
    resolve_method,
)
from kpod_ops.pipeline.run import stage_hashes

ROOT = Path(__file__).resolve().parents[1]

# (preset, method): (SHA-256 of the serialised resolved configuration, {stage folder: hash})
EXPECTED = {
    ("quick", "kpod"): (
        "26f84f6fd8977f12022f087652a83c3f52ef095d63145d74c98af30f891f0188",
        {"data": "01751062431e5045", "warmup": "385b39e09c82bc0e", "eval-before": "0057fbac8cbddc8c", "weights": "aa28cc63d9e28bac", "difficulty-softmax": "b01a6f3459177035", "clusters": "fd5beb27656fbeb9", "schedule": "f403d7e7b9ffd71c", "train": "71979be6b84988c1", "eval": "8e750cbd10e32a85", "eval-val": "5b27daf96fb999ec"},
    ),
    ("quick", "standard"): (
        "3f4c3d53902c79b54555bf0f0a2d2991d47703e4ede53be3ea3d93e397db63c0",
        {"data": "01751062431e5045", "warmup": "385b39e09c82bc0e", "eval-before": "0057fbac8cbddc8c", "weights": "", "train": "878511e0bafd7399", "eval": "4d26866fffd97fce", "eval-val": "91e75ded74337819"},
    ),
    ("quick", "no-weights"): (
        "1ee6c1665dfb1a4b106984674b64769ec15b41b50fbc39420cfb0844ece4ec4d",
        {"data": "01751062431e5045", "warmup": "385b39e09c82bc0e", "eval-before": "0057fbac8cbddc8c", "weights": "aa28cc63d9e28bac", "difficulty-softmax": "b01a6f3459177035", "clusters": "fd5beb27656fbeb9", "schedule": "f403d7e7b9ffd71c", "train": "ad054a60d4ed9717", "eval": "c0e55209bd15b557", "eval-val": "fcdb5a557c810259"},
    ),
    ("quick", "no-sig-dif"): (
        "8d6e7ab6a4ed2abc7f59abfd837d3b25f1239301e4d3b22960382cdd2270a6d3",
        {"data": "01751062431e5045", "warmup": "385b39e09c82bc0e", "eval-before": "0057fbac8cbddc8c", "weights": "aa28cc63d9e28bac", "difficulty-uniform": "b01a6f3459177035", "clusters": "fd5beb27656fbeb9", "schedule": "f403d7e7b9ffd71c", "train": "ecc015609b64a622", "eval": "2d0c23d0cbe875d8", "eval-val": "b8113a0db9a7c1d4"},
    ),
    ("quick", "no-progressive"): (
        "09da5eb76f6aef0c48000a3bd051e008a11fd037efefdfaa6c110ca92e09ae24",
        {"data": "01751062431e5045", "warmup": "385b39e09c82bc0e", "eval-before": "0057fbac8cbddc8c", "weights": "aa28cc63d9e28bac", "train": "20d1f9b1095541eb", "eval": "56c73172ddb56cfe", "eval-val": "3384922a2e3da81b"},
    ),
    ("quick", "no-diversity"): (
        "e7e16d3f0b30d3fa7bce9668d386a2a3a779c6107fa2f5cfcf50549651f18a56",
        {"data": "01751062431e5045", "warmup": "385b39e09c82bc0e", "eval-before": "0057fbac8cbddc8c", "weights": "aa28cc63d9e28bac", "difficulty-softmax": "b01a6f3459177035", "clusters": "fd5beb27656fbeb9", "schedule": "76795fef4b4e215c", "train": "0db4f27c69427c9c", "eval": "dca46ef456dd9441", "eval-val": "49a1b37ca7903174"},
    ),
    ("quick", "paper"): (
        "c58379fb604597af1ebac6cc2f5a55e8232c2f390205612f1b55f0e1048b30c8",
        {"data": "01751062431e5045", "warmup": "385b39e09c82bc0e", "eval-before": "0057fbac8cbddc8c", "weights": "aa28cc63d9e28bac", "difficulty-softmax": "b01a6f3459177035", "clusters": "fd5beb27656fbeb9", "schedule": "435ea1b9152e89df", "train": "74417da3946498fb", "eval": "a5a8f2b75263022f", "eval-val": "e53fac39e349552f"},
    ),
    ("smoke", "kpod"): (
        "4dd458f1da1b4112ed50ebafbb41e9776163244b7a86aecd1f977a7a8ca51745",
        {"data": "ae91fec3df857f1d", "warmup": "6f36bf9c23dbf63b", "eval-before": "1fc381074e61fd19", "weights": "bd7512fc87ff63d8", "difficulty-softmax": "aa9254c6d7c87375", "clusters": "678f83ff53b840c9", "schedule": "97424502d4bdaf4d", "train": "4650e143ba046a9b", "eval": "c14e6d171dc4098e", "eval-val": "d454aeb83f53a59e"},
    ),
    ("smoke", "standard"): (
        "1cbf242b1ad5e6c0c254bfe0eb536350ed5d5a8db4d3054cfa47262b92185ae5",
        {"data": "ae91fec3df857f1d", "warmup": "6f36bf9c23dbf63b", "eval-before": "1fc381074e61fd19", "weights": "", "train": "4e3b5b1006e32d1e", "eval": "5f240c24738515c8", "eval-val": "e6247920ec0bd47e"},
    ),
    ("smoke", "no-weights"): (
        "37c5891a2e8889ab29be80025451f067153d5c21ea1b7aabe0143d49e733ccef",
        {"data": "ae91fec3df857f1d", "warmup": "6f36bf9c23dbf63b", "eval-before": "1fc381074e61fd19", "weights": "bd7512fc87ff63d8", "difficulty-softmax": "aa9254c6d7c87375", "clusters": "678f83ff53b840c9", "schedule": "97424502d4bdaf4d", "train": "4b86c3a5147ef1ed", "eval": "d68afee3b9456f58", "eval-val": "11e9e11f0de075c7"},
    ),
    ("smoke", "no-sig-dif"): (
        "291f4ea897ffdfcc0a2e6e73d5cb9aec20b2290adefde4f54170e3ce5054bb32",
        {"data": "ae91fec3df857f1d", "warmup": "6f36bf9c23dbf63b", "eval-before": "1fc381074e61fd19", "weights": "bd7512fc87ff63d8", "difficulty-uniform": "aa9254c6d7c87375", "clusters": "678f83ff53b840c9", "schedule": "97424502d4bdaf4d", "train": "de59d392a02d610c", "eval": "11530b9586980127", "eval-val": "fcde7d6578af2961"},
    ),
    ("smoke", "no-progressive"): (
        "562ed7c7966e3700376dd35d0d815a7333ebb54b350dca091a9885b1b977c104",
        {"data": "ae91fec3df857f1d", "warmup": "6f36bf9c23dbf63b", "eval-before": "1fc381074e61fd19", "weights": "bd7512fc87ff63d8", "train": "7cd0d8c07ed3525f", "eval": "c6b6a07354fff8c5", "eval-val": "667748ffa316f225"},
    ),
    ("smoke", "no-diversity"): (
        "3037a31e1aac3b159ff567490240aeb936627e74797890513be9878af42c28d3",
        {"data": "ae91fec3df857f1d", "warmup": "6f36bf9c23dbf63b", "eval-before": "1fc381074e61fd19", "weights": "bd7512fc87ff63d8", "difficulty-softmax": "aa9254c6d7c87375", "clusters": "678f83ff53b840c9", "schedule": "010e11e07055fb0e", "train": "4dbfd326980b4271", "eval": "f67ce866eb51237c", "eval-val": "2182572aab8031e6"},
    ),
    ("smoke", "paper"): (
        "09f9db2f06539f09ead47ce38f79a47f2b090776b39b3b06ea383cd190bc8740",
        {"data": "ae91fec3df857f1d", "warmup": "6f36bf9c23dbf63b", "eval-before": "1fc381074e61fd19", "weights": "bd7512fc87ff63d8", "difficulty-softmax": "aa9254c6d7c87375", "clusters": "678f83ff53b840c9", "schedule": "f7f4dd5efaaacf04", "train": "66837df4841177c1", "eval": "3f012a073facd7fe", "eval-val": "a42db59a07e7c7c7"},
    ),
    ("smollm2-gsm", "kpod"): (
        "ca2b2a0facbd3828045585226673f90cbf431013ced1511f64721667166ead36",
        {"data": "69ae465d61d41679", "warmup": "e3501d625f5e430a", "eval-before": "0f438a2625b4a034", "weights": "4b59437153898644", "difficulty-softmax": "e1e3d6d2163147ee", "clusters": "3c2e3165aefacaaa", "schedule": "f8d3e9d22df5f8b2", "train": "9ea5ca8a054d70cc", "eval": "e42c569199dbb401", "eval-val": "fca74909669564f6"},
    ),
    ("smollm2-gsm", "standard"): (
        "9998c956e7414953dcdcc42bdb186e47c8b0feb3c5285a21c0b3d2bb8d57e28e",
        {"data": "69ae465d61d41679", "warmup": "e3501d625f5e430a", "eval-before": "0f438a2625b4a034", "weights": "", "train": "74a2f0014fc4a2be", "eval": "9132715e70a7e956", "eval-val": "b32a03fc1e08b561"},
    ),
    ("smollm2-gsm", "no-weights"): (
        "35e05046e76a40fe1f7c14f0ca98a8f79a3df4d8d1dcbc73facdd9d21a61b6e3",
        {"data": "69ae465d61d41679", "warmup": "e3501d625f5e430a", "eval-before": "0f438a2625b4a034", "weights": "4b59437153898644", "difficulty-softmax": "e1e3d6d2163147ee", "clusters": "3c2e3165aefacaaa", "schedule": "f8d3e9d22df5f8b2", "train": "bd1f298fd03dc991", "eval": "00f950207581a269", "eval-val": "d59045794b2ccb52"},
    ),
    ("smollm2-gsm", "no-sig-dif"): (
        "12ea9791cf1f7536cbb54794ce6462f4a61618d5145d471c7ff5c2ea836b808c",
        {"data": "69ae465d61d41679", "warmup": "e3501d625f5e430a", "eval-before": "0f438a2625b4a034", "weights": "4b59437153898644", "difficulty-uniform": "e1e3d6d2163147ee", "clusters": "3c2e3165aefacaaa", "schedule": "f8d3e9d22df5f8b2", "train": "978e346b93d2e9dd", "eval": "9720fdd68649deac", "eval-val": "e460da4161de1015"},
    ),
    ("smollm2-gsm", "no-progressive"): (
        "ecf8a1641465eb6f63ba70ffe00770b087678d6d2dc502fdcdc4b06d698b55a6",
        {"data": "69ae465d61d41679", "warmup": "e3501d625f5e430a", "eval-before": "0f438a2625b4a034", "weights": "4b59437153898644", "train": "ba3e87921160101e", "eval": "8ba10037e48ca27b", "eval-val": "fa8b4db5b63a1901"},
    ),
    ("smollm2-gsm", "no-diversity"): (
        "4f0d46fbfbce653a40bdce6009234a73a5040f808e09258e9111890310b4b5d3",
        {"data": "69ae465d61d41679", "warmup": "e3501d625f5e430a", "eval-before": "0f438a2625b4a034", "weights": "4b59437153898644", "difficulty-softmax": "e1e3d6d2163147ee", "clusters": "3c2e3165aefacaaa", "schedule": "6996162562168816", "train": "a17b28c561ab7647", "eval": "5605ef5112b5c5f7", "eval-val": "b917e8ba6391e72a"},
    ),
    ("smollm2-gsm", "paper"): (
        "456e9501f9c3d7bf4d4a6fe6da636167c8df4e729e10333f5e9a2749cca13b44",
        {"data": "69ae465d61d41679", "warmup": "e3501d625f5e430a", "eval-before": "0f438a2625b4a034", "weights": "4b59437153898644", "difficulty-softmax": "e1e3d6d2163147ee", "clusters": "3c2e3165aefacaaa", "schedule": "f8d3e9d22df5f8b2", "train": "9ea5ca8a054d70cc", "eval": "e42c569199dbb401", "eval-val": "fca74909669564f6"},
    ),
}


def _serialised(config: DistillConfig | dict) -> str:
    return json.dumps(config.to_dict() if isinstance(config, DistillConfig) else config, indent=2) + "\n"


def _stage_hashes(config: DistillConfig) -> dict[str, str]:
    """The hash of every stage ``distill`` runs for ``config`` ("": the stage is skipped)."""
    return stage_hashes(config, method_settings(config.method))


def _resolved(preset: str, method: str) -> DistillConfig:
    return resolve_method(replace(preset_config(preset), method=method))


def test_every_preset_and_method_is_pinned():
    assert set(EXPECTED) == {(p, m) for p in PRESETS for m in METHODS}


@pytest.mark.parametrize(("preset", "method"), sorted(EXPECTED))
def test_serialised_config_and_stage_hashes_stay_byte_identical(preset, method):
    config = _resolved(preset, method)
    digest, hashes = EXPECTED[preset, method]
    assert hashlib.sha256(_serialised(config).encode()).hexdigest() == digest
    assert _stage_hashes(config) == hashes


def test_cli_config_file_and_flags_serialise_as_before():
    args = _parser().parse_args(["distill", "--preset", "smollm2-gsm", "--config", str(ROOT / "examples" / "paper-llama7b.yaml"),
                                 "--method", "no-diversity", "--seed", "3", "--precision", "bf16", "--allow-degenerate",
                                 "--out", "unused"])
    config = resolve_method(_config(args))
    assert hashlib.sha256(_serialised(config).encode()).hexdigest() == "2f8546b80b19af5d1567bab3d9dfcf2d5aff7e4930db07acad723ce7d131bbe1"
    assert _stage_hashes(config) == {"data": "69ae465d61d41679", "warmup": "9f609f7ab7aa7647", "eval-before": "54ab0a5e52c0cc1b", "weights": "40917823ef780741", "difficulty-softmax": "54f5d4008e8b5142", "clusters": "216e6da1e28dc9f9", "schedule": "e0752a4b2b352fa0", "train": "3ab2f87929edf19e", "eval": "b6f8e3dca35ca92b", "eval-val": "bc7bec6cdf4dba97"}


def test_cli_data_file_and_the_test_suites_tiny_config_serialise_as_before(tmp_path):
    data, tiny = tmp_path / "data.jsonl", tmp_path / "tiny.json"
    data.write_text("{}\n")  # read by distill, not here
    tiny.write_text(json.dumps(TINY))
    args = _parser().parse_args(["distill", "--preset", "quick", "--data", str(data), "--config", str(tiny), "--method", "standard",
                                 "--allow-degenerate", "--out", "unused"])
    config = resolve_method(_config(args))
    assert config.data.source == str(data.resolve())
    config = replace(config, data=replace(config.data, source="DATA"))  # the one value that depends on where the file is
    assert hashlib.sha256(_serialised(config).encode()).hexdigest() == "ae63bfc0db9290f3da81b049d47a7dd39af9e62dd95aec5da943746b5c1c74d9"
    assert _stage_hashes(config) == {"data": "6a100467d0bd4cf7", "warmup": "2457a58f92dc23b2", "eval-before": "8218a51b31339b77", "weights": "", "train": "6294a3c77c36730e", "eval": "7855afe419aa14dd", "eval-val": "63b4e90ffd0b8a70"}


# ----------------------------------------------------------------------------- the typed configuration
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train": {"epochz": 3}}, "train: unknown key 'epochz' (did you mean 'epochs'?)"),
        ({"trian": {}}, "config: unknown key 'trian' (did you mean 'train'?)"),
        ({"weights": {"learner": {"alpah": 0.3}}}, "weights.learner: unknown key 'alpah' (did you mean 'alpha'?)"),
        ({"train": {"lr": "1e-4"}}, "train.lr: expected a number > 0, got '1e-4'"),
        ({"train": {"epochs": 2.5}}, "train.epochs: expected an int >= 1, got 2.5"),
        ({"train": {"epochs": True}}, "train.epochs: expected an int >= 1, got True"),
        ({"train": {"normaliser": "mean"}}, "train.normaliser: expected 'sequence' or 'token', got 'mean'"),
        ({"train": {"fused_linear": "yes"}}, "train.fused_linear: expected 'auto', true or false, got 'yes'"),
        ({"train": {"grad_clip": 0}}, "train.grad_clip: expected a number > 0 or null (no clipping), got 0"),
        ({"train": {"batch_size": 6, "micro_batch_size": 4}}, "train.batch_size: expected a multiple of train.micro_batch_size=4"),
        ({"train": 5}, "train: expected a mapping, got int"),
        ({"weights": {"floor": 1.0}}, "weights.floor: expected a number in [0, 1), got 1.0"),
        ({"weights": {"learner": {"alpha": -1}}}, "weights.learner.alpha: expected a finite number >= 0, got -1"),
        ({"weights": {"learner": {"seed": 3}}}, "weights.learner.seed: expected no value here (the run's --seed"),
        ({"curriculum": {"solver": "ftpg"}}, "curriculum.solver: expected 'ftgp', "),
        ({"warmup": {"corpus": "wiki"}}, "warmup.corpus: expected 'arith-text', got 'wiki'"),
        ({"student": {"kind": "dir"}}, "student.path: expected the model folder for student.kind 'dir'"),
        ({"data": {"max_steps": 1}}, "data.max_steps: expected an int >= 2 or null (any), got 1"),
        ({"seed": -1}, "seed: expected an int >= 0, got -1"),
        ({"method": "kpood"}, "method: expected 'kpod', "),
    ],
)
def test_a_wrong_key_or_value_names_the_key_what_it_expects_and_what_came(overrides, message):
    with pytest.raises(KPODInputError) as info:
        merge(preset_config("quick"), overrides, where="--config my.yaml")
    assert str(info.value).startswith(f"--config my.yaml: {message}"), str(info.value)


def test_overrides_change_only_their_keys_and_keep_the_serialised_order():
    quick = preset_config("quick")
    merged = merge(quick, {"train": {"lr": 1e-4}, "weights": {"learner": {"tau": 0.5}}})
    assert merged.train.lr == 1e-4 and merged.train == replace(quick.train, lr=1e-4)
    assert list(merged.to_dict()["weights"]["learner"]) == [*quick.weights.learner, "tau"]  # a new key goes last
    assert list(merged.to_dict()) == list(quick.to_dict())
    assert merge(quick, {}) == quick and preset_config("quick") == quick  # nothing changed in place


def test_the_configuration_is_frozen_and_round_trips_through_its_serialised_form():
    import copy
    import dataclasses
    import pickle

    config = merge(preset_config("smollm2-gsm"), {"data": {"filter_wrong_answers": True}})
    assert DistillConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert pickle.loads(pickle.dumps(config)) == config and copy.deepcopy(config) == config  # compare sends it to workers
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.weights.learner["alpha"] = 1.0  # type: ignore[index]
    assert "filter_wrong_answers" not in preset_config("quick").to_dict()["data"]  # written only when set
    assert config.to_dict()["data"]["filter_wrong_answers"] is True
    with pytest.raises(KPODInputError, match="config: expected every key, \\['seed'\\] missing"):
        DistillConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "seed"})


def test_the_wording_of_arith_cot_is_written_only_when_varied():
    from kpod_ops.pipeline.data import make_splits

    quick = preset_config("quick")
    assert "wording" not in quick.to_dict()["data"]  # the presets' configurations (and stage hashes) stay as they were
    varied = merge(quick, {"data": {"wording": "varied"}})
    assert varied.to_dict()["data"]["wording"] == "varied" and DistillConfig.from_dict(varied.to_dict()) == varied
    with pytest.raises(KPODInputError, match="data.wording: expected .plain. or .varied., got .fancy."):
        merge(quick, {"data": {"wording": "fancy"}})
    section = varied.to_dict()["data"] | {"n_train": 20, "n_val": 5, "n_test": 10}
    splits = make_splits(section)
    assert " on a " in splits.train[0].rationale or " at the " in splits.train[0].rationale
    assert make_splits(section | {"wording": "plain"}).train[0] != splits.train[0]
    with pytest.raises(KPODInputError, match="settings of the arith-cot data only"):
        make_splits(section | {"source": "gsm-symbolic"})


def test_a_config_file_cannot_set_what_the_command_line_sets(tmp_path):
    for key, value in (("seed", 3), ("method", "paper"), ("preset", "quick")):
        file = tmp_path / f"{key}.json"
        file.write_text(json.dumps({key: value}))
        with pytest.raises(KPODInputError, match=f"expected no '{key}' key \\(it is set on the command line: --{key}"):
            load_config_file(file)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1e-4\n")  # YAML reads 1e-4 (no dot) as a string
    with pytest.raises(KPODInputError, match="train.lr: expected a number > 0, got '1e-4'"):
        merge(preset_config("quick"), load_config_file(bad), where=f"--config {bad}")


def test_the_docs_list_every_key_with_what_it_accepts_and_each_presets_value():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    reference = config_reference()
    assert reference in text, (
        "docs/cli.md's configuration reference is out of date; paste the output of "
        "python -c 'from kpod_ops.pipeline.config import config_reference; print(config_reference())'"
    )
    documented = {line.split("`")[1] for line in reference.splitlines()[2:]}
    keys = {f"{s}.{k}" for s, section in preset_config("quick").to_dict().items() if isinstance(section, dict) for k in section}
    assert keys <= documented and {"precision", "allow_degenerate"} <= documented
    assert "data.filter_wrong_answers" in documented  # the optional key too
