"""``path="auto"``: the conv times its kernels once per input key and machine, runs the
fastest and keeps the choice on disk.

The choice logic is tested with injected timings (never with real ones: a unit test must not
depend on the machine's speed); the auto path's outputs and gradients equal the regular
path's whatever it chose. Every test gets its own cache file and times convs of any size.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

import gcnn
from gcnn.nn import FlipConv2d, set_conv_path, tuning_store
from gcnn.nn import isotypic_tuning as tuning
from tests.nn.test_isotypic import (
    assert_matches_regular_path,
    compile_recording_ops,
    pair_cases,
)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty cache file of this test's own, and no size floor (the test convs are small)."""
    path = tmp_path / "tuning.json"
    monkeypatch.setenv(tuning_store.ENV_VAR, str(path))
    monkeypatch.setattr(tuning, "MIN_MACS_TO_TUNE", 0)
    tuning.clear_tuned_choices()
    yield path
    tuning.clear_tuned_choices()


def _tuned_forward(conv: FlipConv2d, x: torch.Tensor) -> torch.Tensor:
    conv.set_path("auto")
    return conv(x)


@settings(max_examples=25, deadline=None)
@given(pair_cases())
def test_tuned_path_equals_regular_path_with_gradients(case) -> None:  # noqa: ANN001
    assert_matches_regular_path(case, _tuned_forward)
    assert set(tuning.tuned_choices().values()) <= set(tuning.KERNELS)


def _fake_timings(
    monkeypatch: pytest.MonkeyPatch, seconds: dict[str, float]
) -> list[tuple[str, ...]]:
    """Make :func:`tuning.measure` return ``seconds``; returns the log of its calls."""
    calls: list[tuple[str, ...]] = []

    def measure(candidates, backward):  # noqa: ANN001, ANN202
        calls.append(tuple(candidates))
        return {name: seconds[name] for name in candidates}

    monkeypatch.setattr(tuning, "measure", measure)
    return calls


@pytest.mark.parametrize("fastest", tuning.KERNELS)
def test_the_fastest_measured_kernel_is_chosen_and_cached(
    monkeypatch: pytest.MonkeyPatch, fastest: str
) -> None:
    """Each kernel wins when its timing is lowest (so the choice follows the measurement, not
    a fixed rule); the second forward of the same key measures nothing."""
    calls = _fake_timings(monkeypatch, {k: 0.5 if k == fastest else 1.0 for k in tuning.KERNELS})
    conv = FlipConv2d(16, 16, 3, padding=1, path="auto")
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    assert conv.kernel_for(x) == fastest
    conv(x).sum().backward()
    assert calls == [tuning.KERNELS]
    assert list(tuning.tuned_choices().values()) == [fastest]
    # Another batch size is another key (measured again); inference is another key too.
    conv(torch.randn(3, 16, 8, 8))
    with torch.no_grad():
        conv(x)
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        ({"regular": 1.0, "kh_x_1": 0.97, "gemm": 1.2}, "regular"),  # 3 % faster: noise
        ({"regular": 1.0, "kh_x_1": 0.90, "gemm": 1.2}, "kh_x_1"),  # 10 % faster: taken
    ],
)
def test_the_static_rules_pick_stays_within_the_margin(
    monkeypatch: pytest.MonkeyPatch, seconds: dict[str, float], expected: str
) -> None:
    """A small conv (the static rule picks the regular path) keeps the regular path when
    another kernel is less than :data:`TUNING_MARGIN` faster, and switches when it is more."""
    assert tuning.TUNING_MARGIN == pytest.approx(0.05)
    _fake_timings(monkeypatch, seconds)
    conv = FlipConv2d(16, 16, 3, padding=1, path="auto")
    assert not conv._static_isotypic()
    assert conv.kernel_for(torch.randn(2, 16, 8, 8)) == expected


@pytest.mark.parametrize("fastest", tuning.KERNELS)
def test_negative_control_a_plain_filter_is_not_what_any_tuned_kernel_computes(
    monkeypatch: pytest.MonkeyPatch, fastest: str
) -> None:
    """The equality check above can fail: a random plain conv read into free weights is not
    what the tuned conv computes, whichever kernel wins; its equivariant export is."""
    _fake_timings(monkeypatch, {k: 0.5 if k == fastest else 1.0 for k in tuning.KERNELS})
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False).double()
    forced = FlipConv2d.from_conv(plain, "regular", "regular").double()
    forced.set_path("auto")
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert forced.kernel_for(x) == fastest
        assert (forced(x) - plain(x)).abs().max() > 1e-3
        torch.testing.assert_close(forced(x), forced.export()(x), rtol=1e-11, atol=1e-11)


#: Flip models whose layers modify a conv's output in place: ``ReLU(inplace=True)`` right
#: after each conv (VGG11 without BatchNorm), ``out += identity`` after the last BatchNorm of
#: each bottleneck (ResNet50); with an input size each is exact at.
IN_PLACE_MODELS = {
    "vgg11_flip": ({"in_channels": 1, "width": 0.125, "batch_norm": False}, 32),
    "resnet50_flip": ({}, 33),
}


@pytest.mark.parametrize("name", IN_PLACE_MODELS)
@pytest.mark.parametrize("fastest", tuning.KERNELS)
def test_in_place_ops_on_the_output_of_every_kernel_keep_the_gradients(
    monkeypatch: pytest.MonkeyPatch, fastest: str, name: str
) -> None:
    """Whichever kernel the timing picks, a model's in-place ops on a conv output work and
    the gradients stay those of the regular path (an autograd Function that returned a view
    of its own buffer made ``relu_`` raise: found by CI, where real timings picked an s/d
    kernel for a layer that this machine's timings kept regular)."""
    _fake_timings(monkeypatch, {k: 0.5 if k == fastest else 1.0 for k in tuning.KERNELS})
    kwargs, size = IN_PLACE_MODELS[name]
    torch.manual_seed(0)
    tuned = gcnn.create_model(name, num_classes=3, **kwargs)
    regular = set_conv_path(copy.deepcopy(tuned), "regular").double()
    tuned = set_conv_path(tuned.double(), "auto")
    x = torch.rand(2, kwargs.get("in_channels", 3), size, size, dtype=torch.float64)
    tuned(x).square().sum().backward()
    regular(x).square().sum().backward()
    assert set(tuning.tuned_choices().values()) == {fastest}
    for (key, p), q in zip(tuned.named_parameters(), regular.parameters(), strict=True):
        scale = q.grad.abs().max().item()  # float64 rounding of a 50-layer net: ≈ 1e-13
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10 * scale, msg=key)


def test_tuning_leaves_no_gradient_on_the_parameters() -> None:
    """The timed candidates run on detached copies: after a tuned forward (which timed three
    forward + backward passes) the real parameters still have no gradient."""
    conv = FlipConv2d(8, 8, 3, padding=1, bias=True, path="auto")
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    conv(x)
    assert tuning.tuned_choices()  # timing did happen
    assert conv.weight.grad is None and conv.bias.grad is None and x.grad is None


def test_auto_runs_the_regular_path_where_no_isotypic_kernel_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trivial → regular conv (a net's first layer) has no eager pair kernel: nothing is
    timed. Negative control: a regular → regular conv beside it is timed."""
    calls = _fake_timings(monkeypatch, {"regular": 1.0, "kh_x_1": 0.1, "gemm": 1.0})
    first = FlipConv2d(3, 8, 3, in_type="trivial", path="auto")
    assert first.kernel_for(torch.zeros(1, 3, 6, 6)) == "regular"
    assert calls == []
    model = set_conv_path(torch.nn.Sequential(first, FlipConv2d(8, 8, 3)), "auto")
    model(torch.zeros(1, 3, 8, 8))
    assert len(calls) == 1


def test_a_choice_is_stored_per_machine_and_read_back_instead_of_timed(
    monkeypatch: pytest.MonkeyPatch, fresh_cache: Path
) -> None:
    """The first process times and writes its choice; a later one (here: the in-memory cache
    cleared) reads it from the file. Negative control: with persistence off it times again."""
    calls = _fake_timings(monkeypatch, {"regular": 1.0, "kh_x_1": 1.0, "gemm": 0.1})
    conv = FlipConv2d(16, 16, 3, padding=1)
    x = torch.randn(2, 16, 8, 8)
    assert conv.kernel_for(x) == "gemm" and len(calls) == 1
    stored = json.loads(fresh_cache.read_text())["machines"]
    assert list(stored) == [tuning_store.machine_id(x.device)]
    assert list(stored.values()) == [{repr(tuning.tuning_key(conv._plan(), x, True)): "gemm"}]

    tuning.clear_tuned_choices()  # a new process
    assert conv.kernel_for(x) == "gemm" and len(calls) == 1

    monkeypatch.setenv(tuning_store.ENV_VAR, "off")
    tuning.clear_tuned_choices()
    assert conv.kernel_for(x) == "gemm" and len(calls) == 2


def test_clearing_the_stored_choices_makes_the_next_forward_time_again(
    monkeypatch: pytest.MonkeyPatch, fresh_cache: Path
) -> None:
    calls = _fake_timings(monkeypatch, {"regular": 1.0, "kh_x_1": 0.1, "gemm": 1.0})
    conv, x = FlipConv2d(16, 16, 3, padding=1), torch.randn(2, 16, 8, 8)
    conv.kernel_for(x)
    tuning.clear_tuned_choices(stored=True)
    assert json.loads(fresh_cache.read_text())["machines"] == {}
    conv.kernel_for(x)
    assert len(calls) == 2


_CHILD = """
import sys, torch
from gcnn.nn import FlipConv2d
from gcnn.nn import isotypic_tuning as tuning
def refuse(*args):
    raise SystemExit("timed")
tuning.measure = refuse
torch.set_num_threads({threads})
print(FlipConv2d(32, 32, 3, padding=1).kernel_for(torch.randn(2, 32, 8, 8)))
"""


def test_another_process_on_the_machine_reads_the_stored_choice(
    monkeypatch: pytest.MonkeyPatch, fresh_cache: Path
) -> None:
    """A real second process with timing disabled runs the kernel this one stored (a GEMM, which
    no timing would pick for so small a conv). Negative control: the same child with an empty
    cache file has to time, and refuses."""
    _fake_timings(monkeypatch, {"regular": 1.0, "kh_x_1": 1.0, "gemm": 0.1})
    assert FlipConv2d(32, 32, 3, padding=1).kernel_for(torch.randn(2, 32, 8, 8)) == "gemm"
    child = [sys.executable, "-c", _CHILD.format(threads=torch.get_num_threads())]

    def run(cache: Path) -> subprocess.CompletedProcess:
        env = {**os.environ, tuning_store.ENV_VAR: str(cache)}
        return subprocess.run(child, env=env, capture_output=True, text=True, timeout=120)

    done = run(fresh_cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gemm"
    empty = run(fresh_cache.with_name("empty.json"))
    assert empty.returncode != 0 and "timed" in empty.stderr


def test_a_broken_cache_file_warns_and_tuning_goes_on_in_memory(
    monkeypatch: pytest.MonkeyPatch, fresh_cache: Path
) -> None:
    calls = _fake_timings(monkeypatch, {"regular": 1.0, "kh_x_1": 0.1, "gemm": 1.0})
    fresh_cache.write_text("{not json")
    monkeypatch.setattr(tuning_store, "_warned", set())
    with pytest.warns(RuntimeWarning, match="conv tuning cache"):
        assert FlipConv2d(16, 16, 3, padding=1).kernel_for(torch.randn(2, 16, 8, 8)) == "kh_x_1"
    assert len(calls) == 1


def test_the_machine_id_names_the_thread_count() -> None:
    cpu, threads = torch.device("cpu"), torch.get_num_threads()
    try:
        one = tuning_store.machine_id(cpu)
        torch.set_num_threads(threads + 1)
        assert tuning_store.machine_id(cpu) != one
    finally:
        torch.set_num_threads(threads)
    assert torch.__version__ in one


def test_convs_below_the_floor_run_the_regular_path_untimed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the real floor a 16 → 16 3×3 conv (2304 multiply-adds per pixel) times nothing;
    a 32 → 32 one (9216) times its kernels."""
    monkeypatch.setattr(tuning, "MIN_MACS_TO_TUNE", 2**12)
    calls = _fake_timings(monkeypatch, {"regular": 1.0, "kh_x_1": 0.1, "gemm": 1.0})
    assert FlipConv2d(16, 16, 3, padding=1).kernel_for(torch.randn(2, 16, 8, 8)) == "regular"
    assert calls == []
    assert FlipConv2d(32, 32, 3, padding=1).kernel_for(torch.randn(2, 32, 8, 8)) == "kh_x_1"
    assert len(calls) == 1


#: An op that only the graph of each kernel holds.
KERNEL_OPS = {"kh_x_1": "gcnn.pair_pieces", "gemm": "gcnn.pair_im2col"}


@pytest.mark.parametrize("fastest", tuning.KERNELS)
def test_under_compile_the_kernels_are_timed_while_tracing(
    monkeypatch: pytest.MonkeyPatch, fastest: str
) -> None:
    """``torch.compile`` traces fake tensors: ``"auto"`` times the kernels once, on a
    channels-last stand-in of the traced input, and the graph holds the fastest kernel's ops
    and no other's; the outputs and gradients are eager mode's, the global RNG stream is
    untouched, and eager mode on a channels-last input reuses the choice (same key) without
    timing again."""
    calls = _fake_timings(monkeypatch, {k: 0.5 if k == fastest else 1.0 for k in tuning.KERNELS})
    torch.manual_seed(0)
    conv = FlipConv2d(16, 16, 3, padding=1)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    compiled, captured = compile_recording_ops(conv)
    rng = torch.get_rng_state()
    y = compiled(x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert calls == [tuning.KERNELS]
    ((key, choice),) = tuning.tuned_choices().items()
    assert choice == fastest and key[1:3] == ((2, 16, 8, 8), (1024, 1, 128, 16))
    for kernel, op in KERNEL_OPS.items():
        assert any(t.startswith(op) for t in captured) == (kernel == fastest), (kernel, captured)
    g = torch.randn_like(y)
    got = [y, *torch.autograd.grad(y, [x, conv.weight, conv.bias], g)]
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    y = conv(x_cl)
    expected = [y, *torch.autograd.grad(y, [x_cl, conv.weight, conv.bias], g)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(calls) == 1
    conv(x)  # channels-first: another key, timed
    assert len(calls) == 2


def test_under_compile_real_timings_pick_the_kernel_the_graph_runs() -> None:
    """The same with the kernels really timed inside dynamo's trace (on real stand-in tensors,
    forward and backward): one choice, and the graph runs it."""
    conv = FlipConv2d(32, 32, 3, padding=1)
    compiled, captured = compile_recording_ops(conv)
    compiled(torch.randn(2, 32, 8, 8, requires_grad=True)).sum().backward()
    (choice,) = tuning.tuned_choices().values()
    for kernel, op in KERNEL_OPS.items():
        assert any(t.startswith(op) for t in captured) == (kernel == choice), (choice, captured)
    assert conv.weight.grad is not None


def test_under_compile_with_dynamic_shapes_the_traced_sizes_are_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``dynamic=True`` the traced sizes are symbols: the kernels are timed once on the
    sizes seen while tracing (their hints, no guard), and the one graph serves other batch
    sizes, equal to eager mode."""
    calls = _fake_timings(monkeypatch, {"regular": 1.0, "kh_x_1": 1.0, "gemm": 0.1})
    conv = FlipConv2d(16, 16, 3, padding=1)
    compiled = torch.compile(conv, dynamic=True, fullgraph=True, backend="aot_eager")
    xs = [torch.randn(batch, 16, 8, 8) for batch in (3, 5)]
    outputs = [compiled(x) for x in xs]
    ((key, choice),) = tuning.tuned_choices().items()
    assert len(calls) == 1 and key[1] == (3, 16, 8, 8) and choice == "gemm"
    for x, y in zip(xs, outputs, strict=True):
        torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)


def test_under_compile_the_static_path_times_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: on ``"static"`` the compiled graph follows the rule (the regular
    path for this small conv) and nothing is timed."""
    calls = _fake_timings(monkeypatch, {"regular": 1.0, "kh_x_1": 0.1, "gemm": 1.0})
    compiled, captured = compile_recording_ops(FlipConv2d(16, 16, 3, padding=1, path="static"))
    compiled(torch.randn(2, 16, 8, 8, requires_grad=True))
    assert calls == [] and not any(t.startswith("gcnn.") for t in captured)


@pytest.mark.parametrize(("channels", "expected"), [(16, "regular"), (256, "kh_x_1")])
def test_the_static_path_times_nothing_and_follows_the_rule(
    monkeypatch: pytest.MonkeyPatch, channels: int, expected: str
) -> None:
    """``"static"``: the fixed rule (regular for small 3×3 convs, ``kh × 1`` from 2¹⁸
    multiply-adds per pixel), however the kernels would time."""
    calls = _fake_timings(monkeypatch, {"regular": 1.0, "kh_x_1": 1.0, "gemm": 0.1})
    conv = FlipConv2d(channels, channels, 3, padding=1, path="static")
    assert conv.kernel_for(torch.randn(2, channels, 8, 8)) == expected
    assert calls == []


def test_the_tuning_command_shows_and_clears_only_this_machines_choices(
    monkeypatch: pytest.MonkeyPatch, fresh_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    """``gcnn tuning`` reports the stored choice this process made and ``--clear`` removes it;
    negative control: another machine's entry in the same file survives the clear."""
    from gcnn.cli import main

    _fake_timings(monkeypatch, {"regular": 1.0, "kh_x_1": 1.0, "gemm": 0.1})
    conv, x = FlipConv2d(16, 16, 3, padding=1), torch.randn(2, 16, 8, 8)
    assert conv.kernel_for(x) == "gemm"
    tuning_store.save("another machine", "some key", "regular")
    machine = tuning_store.machine_id(x.device)

    assert main(["tuning", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert f"this machine: {machine}\n  1 choice(s): regular 0, kh_x_1 0, gemm 1" in out
    assert "also stored for: another machine\n  1 choice(s): regular 1" in out
    assert f"gemm     {tuning.tuning_key(conv._plan(), x, True)!r}" in out

    assert main(["tuning", "--clear"]) == 0
    assert f"cleared 1 stored choice(s) of {machine}" in capsys.readouterr().out
    assert json.loads(fresh_cache.read_text())["machines"] == {
        "another machine": {"some key": "regular"}
    }
    assert main(["tuning"]) == 0
    assert "0 choice(s)" in capsys.readouterr().out


def test_the_tuning_command_with_the_cache_off_and_bad_threads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from gcnn.cli import main

    monkeypatch.setenv(tuning_store.ENV_VAR, "off")
    assert main(["tuning"]) == 0
    assert "conv tuning cache: off" in capsys.readouterr().out
    assert main(["tuning", "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_the_cache_file_location_and_a_machine_without_a_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``$XDG_CACHE_HOME/gcnn/conv_tuning.json`` by default; with no home directory at all the
    choices stay in memory (``None``) instead of failing the forward."""
    monkeypatch.delenv(tuning_store.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tuning_store.store_path() == tmp_path / "gcnn" / "conv_tuning.json"

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert tuning_store.store_path() is None
