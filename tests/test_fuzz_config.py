"""Bad config input, fuzzed: any --set override or YAML document either loads into a valid
Config or raises ConfigError with one line naming the key; the CLI turns it into
``error: ...`` and exit 2 (a traceback only with --debug)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml
from faultlib import TINY, FuzzTally
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganscale.cli import main
from ganscale.config import Config, ConfigError, load_config, valid_keys

pytestmark = pytest.mark.faults

KEYS = valid_keys()
scalars = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.sampled_from(
        ["inf", "-inf", "nan", ".inf", ".nan", "1e400", "2e-4", "no", "yes", "[1, 2]", "{a: 1}", "~"]
    ),
)
values = st.one_of(
    scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=2)
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=15), st.sampled_from(KEYS).map(lambda k: k + "x"))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _assert_valid(cfg: Config) -> None:
    def walk(obj):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v)
            elif isinstance(v, float):
                assert math.isfinite(v), f"{f.name}={v} accepted"

    walk(cfg)


_tally = FuzzTally()


def _check(overrides: list[str] | None = None, path=TINY) -> None:
    """Load; a valid Config or a one-line ConfigError is counted, anything else is a crash."""
    with _tally.example() as seen:
        try:
            cfg = load_config(path, overrides or [])
        except ConfigError as e:
            msg = str(e)
            assert msg and "\n" not in msg
            seen["error"] += 1
            return
        _assert_valid(cfg)
        seen["ok"] += 1


@FUZZ
@given(key=keys, value=values)
def test_fuzz_set_override(key, value):
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    _check([f"{key}={text}"])


@FUZZ
@given(doc=st.dictionaries(keys, values, max_size=4), section=st.sampled_from(["train", "model", "data", ""]))
def test_fuzz_yaml_document(tmp_path_factory, doc, section):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    body = {section: doc} if section else doc
    path.write_text(yaml.safe_dump(body))
    _check(path=path)


def test_fuzz_config_summary():
    """The fuzz above ran and every input either loaded valid or was refused in one line: the
    count of anything else (a crash) is asserted, not assumed."""
    seen = _tally.outcomes
    _tally.summary(
        "fuzz: config --set + YAML",
        f"{seen['ok']} loaded valid, {seen['error']} one-line ConfigError",
        at_least=100,
    )


@pytest.mark.parametrize(
    "sets,needle",
    [
        (["train.batch_size=abc"], "train.batch_size: expected int"),
        (["train.batchsize=2"], "did you mean train.batch_size"),
        (["train.batch_size=-8"], "train.batch_size: must be > 0"),
        (["model.image_size=-16"], "model.image_size"),
        (["optim.g_lr=inf"], "optim.g_lr: must be a finite number"),
        (["train.global_batch=12"], "train.global_batch: 12 is not divisible"),
        (
            ["data.source=shards", "data.path=/nonexistent/shards-{000000..000003}.tar"],
            "/nonexistent/shards-000000.tar",
        ),
    ],
    ids=[
        "wrong-type",
        "unknown-key",
        "negative-batch",
        "negative-size",
        "inf-lr",
        "global-batch",
        "missing-data",
    ],
)
def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys, corpus_cache, sets, needle):
    argv = ["train", str(TINY), "--out", str(tmp_path / "run"), "--set", f"data.cache_dir={corpus_cache}"]
    for s in sets:
        argv += ["--set", s]
    with pytest.raises(SystemExit) as e:
        main(argv)
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert e.value.code == 2 and len(err) == 1 and needle in err[0] and "Traceback" not in stderr, stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any training
    with pytest.raises(Exception) as dbg:  # --debug: the exception (and its traceback) comes through
        main(["--debug", *argv])
    assert needle.split(":")[0] in str(dbg.value)


def test_cli_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "nope.yaml not found" in err[0]
